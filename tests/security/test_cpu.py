"""A run spinning more processes than its CPU limit is held to it: the CPU time the kernel
gives its container, read from inside, stays at about its share. (A neighbour's command
latency under such a run: benchmarks/bench_cpu_neighbour.py, figures in docs/performance.md.)"""

from __future__ import annotations

import pytest

from pyflue.models import RunStatus
from pyflue.runs import Runner
from tests.conftest import WriteWorkflow

pytestmark = pytest.mark.docker

# CPU time of the container so far, in ns: cgroup v2's cpu.stat, else v1's cpuacct.usage.
CPU_NS = ("if [ -e /sys/fs/cgroup/cpu.stat ]; then "
          "echo $(( $(sed -n 's/^usage_usec //p' /sys/fs/cgroup/cpu.stat) * 1000 )); "
          "else cat /sys/fs/cgroup/cpuacct/cpuacct.usage; fi")

SPINNER = """
import asyncio, time
from pyflue import create_agent
agent = create_agent(lambda ctx: {"cpus": 0.5})
async def run(ctx):
    h = await ctx.init(agent)
    spin = asyncio.ensure_future(h.shell(
        "for i in 1 2 3 4; do python3 -c 'while 1: pass' & done; wait", timeout=60))
    await asyncio.sleep(0.3)
    t0, a = time.monotonic(), int((await h.shell(CPU_NS))["stdout"])
    await asyncio.sleep(1.5)
    t1, b = time.monotonic(), int((await h.shell(CPU_NS))["stdout"])
    spin.cancel()
    await asyncio.gather(spin, return_exceptions=True)
    return (b - a) / 1e9 / (t1 - t0)  # cores used while spinning
"""


async def test_a_run_spinning_every_core_is_held_to_its_cpu_limit(
    runner: Runner, write_workflow: WriteWorkflow, runtime: str
) -> None:
    if runtime == "runsc":
        pytest.skip("gVisor's cgroup files are its own; the limit is the host's (runc covers it)")
    write_workflow("spinner", SPINNER.replace("CPU_NS", repr(CPU_NS)))
    run = await runner.run("spinner", {})
    assert run.status is RunStatus.completed, run.error
    # 4 busy loops on a machine of 2 cores, limited to half a core: at most about 0.5 (never
    # 2; less when the machine is busy with other work).
    assert 0 < run.result <= 0.6, f"4 spinning processes used {run.result:.2f} cores of 0.5"
