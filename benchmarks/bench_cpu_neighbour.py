"""A neighbour's command latency while another run spins more processes than its CPU limit.

Two runs on one runner (the real engine, SQLite store, the default channel): the spinner
(``cpus: 1``) starts 4 busy loops; the neighbour times ``harness.shell("true")`` in rounds,
interleaved with the spinner frozen (SIGSTOP: idle) and spinning (SIGCONT: busy), so the
machine's own drift falls on both alike. Reported: p50 idle, p50 busy and their ratio (target:
busy within 2x idle).

    .venv/bin/python benchmarks/bench_cpu_neighbour.py [--rounds 6] [--per-round 8] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import docker
from _common import machine, run_benchmark, say

from pyflue.settings import PoolSettings, SandboxDefaults, Settings
from pyflue.wiring import open_runner

SPINNER = """
import asyncio
from pyflue import create_agent
agent = create_agent(lambda ctx: {"cpus": 1})
async def run(ctx):
    h = await ctx.init(agent)
    async def freeze(frozen):
        await h.shell(f"pkill -{'STOP' if frozen else 'CONT'} -f 'while [1]: pass'")
    SHARED["freeze"] = freeze
    spin = asyncio.ensure_future(h.shell(
        "for i in 1 2 3 4; do python3 -c 'while 1: pass' & done; wait", timeout=600))
    await asyncio.sleep(0.5)
    SHARED["spinning"].set()
    await SHARED["measured"].wait()
    spin.cancel()
    await asyncio.gather(spin, return_exceptions=True)
"""

NEIGHBOUR = """
import time
from pyflue import create_agent
agent = create_agent(lambda ctx: {})
async def timed(h, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await h.shell("true")
        out.append(time.perf_counter() - t)
    return out
async def run(ctx):
    h = await ctx.init(agent)
    await SHARED["spinning"].wait()
    await timed(h, 3)
    idle, busy = [], []
    for _ in range(ctx.payload["rounds"]):
        await SHARED["freeze"](True)
        idle += await timed(h, ctx.payload["per_round"])
        await SHARED["freeze"](False)
        busy += await timed(h, ctx.payload["per_round"])
    SHARED["measured"].set()
    return {"idle": idle, "busy": busy}
"""


async def measure(project: Path, args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(project_dir=project, store_url=f"sqlite+aiosqlite:///{project}/s.db",
                        sandbox=SandboxDefaults(), pool=PoolSettings(size=0))
    shared: dict[str, Any] = {"spinning": asyncio.Event(), "measured": asyncio.Event()}
    async with open_runner(settings) as runner:
        for name in ("spinner", "neighbour"):
            runner.registry.get(name).module.SHARED = shared
        _, neighbour = await asyncio.gather(
            runner.run("spinner", {}),
            runner.run("neighbour", {"rounds": args.rounds, "per_round": args.per_round}))
    idle = statistics.median(neighbour.result["idle"]) * 1000
    busy = statistics.median(neighbour.result["busy"]) * 1000
    say(f"idle p50 {idle:.1f} ms, busy p50 {busy:.1f} ms")
    return {"samples": args.rounds * args.per_round, "idle_p50_ms": round(idle, 2),
            "busy_p50_ms": round(busy, 2), "ratio": round(busy / idle, 2),
            "target_met": busy <= 2 * idle}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pyflue-bench-cpu-") as tmp:
        project = Path(tmp)
        (project / "workflows").mkdir()
        for name, source in (("spinner", SPINNER), ("neighbour", NEIGHBOUR)):
            (project / "workflows" / f"{name}.py").write_text(textwrap.dedent(source))
        results = [await measure(project, args)]
    return {"machine": machine(docker.from_env()), "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report, code = run_benchmark(main_async, args, "benchmarks/bench_cpu_neighbour.py", argv)
    if report is not None:
        print(json.dumps(report["results"], indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
