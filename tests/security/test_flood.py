"""An output flood is cut to the cap, and what the server holds for it stays small.

Memory is measured for the flood alone: the peak resident size of a fresh ``pyflue run``
process that runs the flood, against the same process running the same workflow without it
(not this test process's high-water mark, which other tests raise before)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyflue.settings import Settings
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

FLOOD_BYTES = 150_000_000  # ~3x the bound below: a server holding it would show

FLOOD = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def run(ctx):
    h = await ctx.init(agent)
    n = ctx.payload["bytes"]
    r = await h.shell(f"head -c {n} /dev/zero | tr '\\\\0' x; echo END", timeout=300)
    return {"kept": len(r["stdout"]), "end": r["stdout"].endswith("END\\n"), "code": r["exit_code"]}
"""


def _peak_mib(project: Path, settings: Settings, n: int) -> tuple[float, dict[str, object]]:
    """Runs the flood of ``n`` bytes in a fresh `pyflue run`; its peak RSS and result."""
    env = {**os.environ, "PYFLUE_STORE_URL": settings.resolved_store_url(),
           "PYFLUE_SANDBOX_RUNTIME": settings.sandbox.runtime or "runc"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyflue.cli", "run", "flood", "--payload",
         json.dumps({"bytes": n})], cwd=project, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, out
    return usage.ru_maxrss / 1024, json.loads(out)


async def test_a_flood_of_output_is_truncated_and_memory_stays_bounded(
    project: Path, settings: Settings, write_workflow: WriteWorkflow
) -> None:
    write_workflow("flood", FLOOD)
    base, _ = _peak_mib(project, settings, 0)
    peak, result = _peak_mib(project, settings, FLOOD_BYTES)
    assert result["code"] == 0 and result["end"] is True
    assert result["kept"] < 2 * 2**20  # head + tail of the 1 MiB cap
    # The caps, the stream's window and the events: far below what went through.
    assert peak - base < 48, f"a {FLOOD_BYTES} B flood cost the server {peak - base:.0f} MiB"
