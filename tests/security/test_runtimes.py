"""The same promises under each runtime the engine has: runc always, gVisor (runsc) where
registered (./scripts/setup registers it when it starts the engine)."""

from __future__ import annotations

from typing import Any

import pytest

from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

WORKFLOW = """
from pyflue import create_agent
agent = create_agent(lambda ctx: {"runtime": ctx.payload["runtime"]})
async def run(ctx):
    h = await ctx.init(agent)
    await h.fs.write_file("in/data.bin", bytes(range(256)) * 64)
    probes = {
        "status": "grep -E '^(Uid|CapEff|NoNewPrivs):' /proc/self/status",
        "mount": "mount -t tmpfs none /mnt",
        "root_write": "touch /etc/evil",
        "net": "python3 -c 'import socket; print(*[n for _, n in socket.if_nameindex()])'",
        "sum": "sha256sum in/data.bin | cut -c1-16",
    }
    out = {k: await h.shell(v) for k, v in probes.items()}
    out["back"] = len(await h.fs.read_bytes("in/data.bin"))
    return out
"""


@pytest.mark.parametrize("runtime", ["runc", "runsc"])
async def test_the_sandbox_holds_under_each_runtime(
    runtime: str, runner: Runner, write_workflow: WriteWorkflow, docker_client: Any
) -> None:
    if runtime not in (docker_client.info().get("Runtimes") or {}):
        pytest.skip(f"{runtime} is not registered with this Docker engine")
    write_workflow("rt", WORKFLOW)
    run = await runner.run("rt", {"runtime": runtime})
    assert run.status is RunStatus.completed, run.error
    r = run.result
    status = dict(line.split(":\t", 1) for line in r["status"]["stdout"].splitlines())
    assert status["Uid"].split()[0] == "1000"
    # gVisor's /proc has no NoNewPrivs line; its own kernel enforces the flag.
    assert status.get("NoNewPrivs", "1") == "1"
    assert status["CapEff"] == "0000000000000000"
    assert r["mount"]["exit_code"] != 0 and r["root_write"]["exit_code"] != 0
    assert r["net"]["stdout"].split() == ["lo"]
    assert r["sum"]["stdout"].strip() and r["back"] == 256 * 64
