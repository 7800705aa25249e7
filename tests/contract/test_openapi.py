"""The OpenAPI document is the contract: Schemathesis, with all its checks and both positive
and negative data, finds nothing against a real ``pyflue serve`` that has a token.

The server's project has quick workflows (no container): one that returns, one that raises (so
``?wait=result`` answers with documented 5xx outcomes), one that reads ``ctx.req``. The
invocation's ``name`` is drawn from them part of the time (schemathesis.toml), so runs really
start and the stateful phase follows their run ids through the document's links. The seed is
random; a failure prints it: rerun with ``PYFLUE_CONTRACT_SEED=<seed>``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WriteWorkflow
from tests.integration.servers import Server

pytestmark = pytest.mark.contract

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOKEN = "contract-token"
EXAMPLES = int(os.environ.get("PYFLUE_CONTRACT_EXAMPLES", "150"))

WORKFLOWS = {
    "quick": '''
        """Returns its payload's keys at once."""
        async def run(ctx):
            ctx.log.info("quick", keys=sorted(ctx.payload))
            return {"keys": sorted(ctx.payload)}
        ''',
    "boom": '''
        """Fails at once."""
        async def run(ctx):
            raise ValueError("boom")
        ''',
    "request_echo": '''
        """Reads the HTTP request it was invoked with."""
        async def run(ctx):
            body = await ctx.req.body() if ctx.req is not None else b""
            return {"bytes": len(body)}
        ''',
}


@pytest.fixture
def server(project: Path, tmp_path: Path, write_workflow: WriteWorkflow) -> Iterator[Server]:
    for name, source in WORKFLOWS.items():
        write_workflow(name, source)
    srv = Server(project, tmp_path / "store.db", concurrency=4,
                 env={"PYFLUE_API_TOKEN": TOKEN})
    srv.start()
    yield srv
    srv.stop()


@pytest.mark.timeout(900)
def test_schemathesis_finds_nothing_against_a_real_server(server: Server, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "schemathesis.cli", "--no-color",
        "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{server.url}/openapi.json",
        "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", "all", "--mode", "all", "--max-examples", str(EXAMPLES),
        "--request-timeout", "60", "--workers", "2",
    ]
    if seed := os.environ.get("PYFLUE_CONTRACT_SEED"):
        command += ["--seed", seed]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.hooks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=840, check=False)
    assert done.returncode == 0, f"Schemathesis found problems:\n{done.stdout}\n{done.stderr}"
    selected = re.search(r"Selected: (\d+)/(\d+)", done.stdout)
    tested = re.search(r"Tested: (\d+)", done.stdout)
    assert selected and tested, done.stdout
    assert selected[1] == selected[2] == tested[1], f"not every operation was tested:\n{done.stdout}"
