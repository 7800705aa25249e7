"""The warm pool, measured side by side with the raw Docker SDK in one run.

Against real ``pyflue serve`` processes started here (free 127.0.0.1 port, own SQLite store in a
temporary folder) and docker-py doing the same work on the same engine:

(1) warm: a trivial run end to end (``ctx.init(agent)`` + ``harness.shell("true")`` + a result)
    through ``POST /workflows/trivial?wait=result`` on a server with a pool of 2, interleaved
    with a raw cold run (hardened volume + container create, start, exec ``true``, removal of
    both: what bench_sandbox.py calls raw). Before each side of a pair the pool is let fill
    (``/health``), untimed, so both run beside a full, idle pool. Targets: warm p50 <= 50 ms
    and <= 0.15x the raw p50.
(2) cold: the same, on a server with ``PYFLUE_POOL_SIZE=0``. Target: p50 <= 1.3x raw.
(3) claim: ``WarmPool.claim`` in this process (a DockerProvider with a pool of 2), p50.
    Target: <= 5 ms.
(4) burst: 20 trivial runs invoked at once on a server with a pool of 20 (and 20 run slots),
    timed from the first request to the last answer. Target: all finished within 1 s.
(5) idle memory: each of that server's 20 pooled containers, idle, from its cgroup (the
    engine's stats: usage less inactive file cache, as ``docker stats`` shows). Target: the
    median <= 5 MiB.

    .venv/bin/python benchmarks/bench_pool.py            # full: 30 pairs each, about 1-2 min
    .venv/bin/python benchmarks/bench_pool.py --quick    # smoke run: 5 pairs
    .venv/bin/python benchmarks/bench_pool.py --json out.json

Exits 0 when every measurement ran (targets met or not), 1 on an error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
from _common import machine, run_benchmark, say

from pyflue.sandbox.docker import DockerProvider
from pyflue.sandbox.docker.lifecycle import container_config, resource_name, volume_options
from pyflue.settings import PoolSettings, SandboxDefaults, Settings
from pyflue.wiring import pool_templates, store_scope

TRIVIAL = '''\
from pyflue import create_agent

agent = create_agent(lambda ctx: {})


async def run(ctx):
    harness = await ctx.init(agent)
    await harness.shell("true")
    return {"ok": True}
'''

TARGETS = {"warm_p50_ms": 50.0, "warm_vs_raw": 0.15, "cold_vs_raw": 1.3, "claim_p50_ms": 5.0,
           "burst_s": 1.0, "idle_mib": 5.0}


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def p90_ms(xs: list[float]) -> float:
    return (statistics.quantiles(xs, n=10, method="inclusive")[-1] if len(xs) > 1 else xs[0]) * 1e3


class Server:
    """``pyflue serve`` as a subprocess with its own store and environment."""

    def __init__(self, project: Path, name: str, env: dict[str, str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.project = project
        self.store_url = f"sqlite+aiosqlite:///{project / (name + '.db')}"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYFLUE_STORE_URL": self.store_url, **env}
        self.env.pop("PYFLUE_API_TOKEN", None)
        self.log = project / f"{name}.log"
        # The scope label of its containers (see pyflue.wiring.store_scope)
        self.scope = store_scope(Settings(project_dir=project,  # type: ignore[call-arg]
                                          store_url=self.store_url))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyflue.cli", "serve", "--port", str(self.port)],
                cwd=self.project, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=1, trust_env=False).is_success:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"the server did not come up: {self.log.read_text()[-2000:]}")

    def __exit__(self, *_: Any) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def pool_ready(client: httpx.AsyncClient, want: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pools = (await client.get("/health")).json()["pool"]
        if pools and all(p["ready"] >= want for p in pools):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the pool did not fill to {want} within {timeout:g} s")


async def launch_of(client: httpx.AsyncClient, run_id: str) -> str:
    events = (await client.get(f"/runs/{run_id}/events",
                               params={"types": "container_started"})).json()["events"]
    return str(events[0]["data"]["launch"])


PHASES = {  # name: (from event, to event), by the events' own timestamps
    "container (claim or create+start)": ("run_start", "container_started"),
    "the command (shell_start to shell_end)": ("shell_start", "shell_end"),
    "end (container_exited, removal, run_end)": ("shell_end", "run_end"),
}


async def phases_of(client: httpx.AsyncClient, run_id: str) -> dict[str, float]:
    events = (await client.get(f"/runs/{run_id}/events")).json()["events"]
    at = {e["type"]: datetime.fromisoformat(e["timestamp"]) for e in events}
    return {name: (at[b] - at[a]).total_seconds() for name, (a, b) in PHASES.items()}


async def invoke(client: httpx.AsyncClient) -> tuple[float, str]:
    t0 = time.perf_counter()
    answer = await client.post("/workflows/trivial?wait=result", json={})
    took = time.perf_counter() - t0
    body = answer.json()
    if answer.status_code != 200 or body.get("status") != "completed":
        raise RuntimeError(f"the trivial run did not complete: {body}")
    return took, str(body["run_id"])


def raw_cold(client: Any, scope: str) -> float:
    """Hardened volume + container create, start, exec `true`, removal: the raw SDK's run."""
    spec = pool_templates(Settings(pool=PoolSettings(size=1)))[0][0]  # type: ignore[call-arg]
    spec = dataclasses.replace(spec, run_id=f"workflow:bench-raw:{uuid.uuid4().hex[:12]}",
                               workflow="bench-raw")
    volume = resource_name(spec.run_id)
    api = client.api
    t0 = time.perf_counter()
    client.volumes.create(volume, driver="local", driver_opts=volume_options(spec),
                          labels={"dev.pyflue.bench": "raw"})
    cid = client.containers.create(**container_config(spec, volume, scope)).id
    try:
        api.start(cid)
        ex = api.exec_create(cid, ["/bin/sh", "-c", "true"], user=spec.user,
                             workdir=spec.workdir)
        api.exec_start(ex["Id"])
        if api.exec_inspect(ex["Id"])["ExitCode"] != 0:
            raise RuntimeError("raw exec of `true` failed")
    finally:
        api.remove_container(cid, force=True, v=True)
        api.remove_volume(volume, force=True)
    return time.perf_counter() - t0


async def pairs(server: Server, docker_client: Any, n: int, pool: int,
                warmup: int) -> dict[str, Any]:
    ours: list[float] = []
    raw: list[float] = []
    launches: list[str] = []
    phases: dict[str, list[float]] = {name: [] for name in PHASES}
    async with httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False) as client:
        for i in range(warmup + n):
            if pool:
                await pool_ready(client, pool)
            first_raw = i % 2 == 0
            if first_raw:
                r = await asyncio.to_thread(raw_cold, docker_client, "bench-raw")
                if pool:
                    await pool_ready(client, pool)
            took, run_id = await invoke(client)
            if not first_raw:
                if pool:  # the raw side too runs beside a full, idle pool
                    await pool_ready(client, pool)
                r = await asyncio.to_thread(raw_cold, docker_client, "bench-raw")
            if i >= warmup:
                ours.append(took)
                raw.append(r)
                launches.append(await launch_of(client, run_id))
                for name, took_s in (await phases_of(client, run_id)).items():
                    phases[name].append(took_s)
    return {"phases_p50_ms": {name: median_ms(xs) for name, xs in phases.items()},
            "n": n, "pyflue_p50_ms": median_ms(ours), "pyflue_p90_ms": p90_ms(ours),
            "raw_p50_ms": median_ms(raw), "raw_p90_ms": p90_ms(raw),
            "ratio": statistics.median(ours) / statistics.median(raw),
            "launches": {k: launches.count(k) for k in sorted(set(launches))}}


async def claims(n: int) -> dict[str, Any]:
    settings = Settings(pool=PoolSettings(size=2))  # type: ignore[call-arg]
    provider = DockerProvider(scope="bench-claim")
    provider.enable_pool(pool_templates(settings), owner=f"bench:{os.getpid()}:claim")
    provider.start_pool()
    assert provider.pool is not None
    spec = pool_templates(settings)[0][0]
    times: list[float] = []
    try:
        for _ in range(n):
            if not await provider.pool.wait_filled(120):
                raise RuntimeError("the in-process pool did not fill")
            t0 = time.perf_counter()
            pooled = await provider.pool.claim(spec)
            times.append(time.perf_counter() - t0)
            if pooled is None:
                raise RuntimeError("nothing to claim from a full pool")
            await provider._pooled_remove(pooled.container_id, pooled.name)
    finally:
        await provider.close()
    return {"n": n, "p50_ms": median_ms(times), "p90_ms": p90_ms(times)}


def idle_mib(docker_client: Any, cid: str) -> float:
    stats = docker_client.api.stats(cid, stream=False)["memory_stats"]
    inner = stats.get("stats") or {}
    cache = inner.get("inactive_file", inner.get("total_inactive_file", 0))
    return float(stats["usage"] - cache) / (1 << 20)


async def burst(server: Server, docker_client: Any, size: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60, trust_env=False) as client:
        await pool_ready(client, size)
        await asyncio.sleep(2)  # let the pooled containers settle into idleness
        pooled = docker_client.api.containers(
            filters={"label": ["dev.pyflue.pool", f"dev.pyflue.scope={server.scope}"]})
        memory = [idle_mib(docker_client, c["Id"]) for c in pooled]
        t0 = time.perf_counter()
        done = await asyncio.gather(*(invoke(client) for _ in range(size)))
        took = time.perf_counter() - t0
        launches = [await launch_of(client, run_id) for _, run_id in done]
    return {"runs": size, "all_finished_s": took,
            "slowest_s": max(t for t, _ in done),
            "launches": {k: launches.count(k) for k in sorted(set(launches))},
            "idle_mib_median": statistics.median(memory), "idle_mib_max": max(memory),
            "idle_containers_measured": len(memory)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    docker_client = docker.from_env()
    folder = Path(tempfile.mkdtemp(prefix="pyflue-bench-pool-"))
    (folder / "workflows").mkdir()
    (folder / "workflows" / "trivial.py").write_text(TRIVIAL)
    report: dict[str, Any] = {"machine": machine(docker_client, image=SandboxDefaults().image)}
    try:
        say(f"(1) warm: {args.n} pairs, pool of 2")
        with Server(folder, "warm", {"PYFLUE_POOL_SIZE": "2"}) as srv:
            report["warm"] = await pairs(srv, docker_client, args.n, 2, args.warmup)
        say(f"(2) cold: {args.n} pairs, pool off")
        with Server(folder, "cold", {"PYFLUE_POOL_SIZE": "0"}) as srv:
            report["cold"] = await pairs(srv, docker_client, args.n, 0, args.warmup)
        say(f"(3) claim: {args.n} claims")
        report["claim"] = await claims(args.n)
        say(f"(4, 5) burst of {args.burst} with a pool of {args.burst}; idle memory")
        env = {"PYFLUE_POOL_SIZE": str(args.burst), "PYFLUE_MAX_CONCURRENCY": str(args.burst),
               "PYFLUE_POOL_REFILL_CONCURRENCY": "4"}
        with Server(folder, "burst", env) as srv:
            report["burst"] = await burst(srv, docker_client, args.burst)
    finally:
        docker_client.close()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    report["verdicts"] = verdicts(report)
    return report


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "warm p50 <= 50 ms": r["warm"]["pyflue_p50_ms"] <= TARGETS["warm_p50_ms"],
        "warm <= 0.15x raw cold": r["warm"]["ratio"] <= TARGETS["warm_vs_raw"],
        "cold <= 1.3x raw": r["cold"]["ratio"] <= TARGETS["cold_vs_raw"],
        "claim p50 <= 5 ms": r["claim"]["p50_ms"] <= TARGETS["claim_p50_ms"],
        "burst of 20 within 1 s": r["burst"]["all_finished_s"] <= TARGETS["burst_s"],
        "idle pooled container <= 5 MiB": r["burst"]["idle_mib_median"] <= TARGETS["idle_mib"],
    }


def render(r: dict[str, Any]) -> str:
    w, c, b = r["warm"], r["cold"], r["burst"]
    rows = [
        "| Measurement | pyflue | raw Docker SDK | ratio | target |",
        "| --- | --- | --- | --- | --- |",
        f"| trivial run, warm pool, `POST ?wait=result` p50 (p90) | {w['pyflue_p50_ms']:.1f} ms "
        f"({w['pyflue_p90_ms']:.1f}) | {w['raw_p50_ms']:.1f} ms cold ({w['raw_p90_ms']:.1f}) | "
        f"{w['ratio']:.3f}x | <= 50 ms, <= 0.15x |",
        f"| trivial run, pool off, p50 (p90) | {c['pyflue_p50_ms']:.1f} ms "
        f"({c['pyflue_p90_ms']:.1f}) | {c['raw_p50_ms']:.1f} ms ({c['raw_p90_ms']:.1f}) | "
        f"{c['ratio']:.2f}x | <= 1.3x |",
        f"| claim from the pool p50 (p90) | {r['claim']['p50_ms']:.2f} ms "
        f"({r['claim']['p90_ms']:.2f}) | | | <= 5 ms |",
        f"| burst: {b['runs']} runs at once, pool of {b['runs']} | all finished in "
        f"{b['all_finished_s']:.2f} s | | | <= 1 s |",
        f"| idle pooled container memory (median of {b['idle_containers_measured']}; max) | "
        f"{b['idle_mib_median']:.2f} MiB; {b['idle_mib_max']:.2f} | | | <= 5 MiB |",
    ]
    lines = ["\n".join(rows), "", "where a run's time goes, p50 (from its events' timestamps):"]
    lines += [f"  {name}: warm {w['phases_p50_ms'][name]:.1f} ms, cold "
              f"{c['phases_p50_ms'][name]:.1f} ms" for name in PHASES]
    lines += ["",
              f"launches: warm phase {w['launches']}, cold phase {c['launches']}, "
              f"burst {b['launches']}"]
    lines += [f"{'met ' if ok else 'MISSED'}  {name}" for name, ok in r["verdicts"].items()]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=30, help="timed pairs / claims")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--burst", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="5 pairs, a smoke run")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.warmup = 5, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    report, code = run_benchmark(main_async, args, "benchmarks/bench_pool.py", argv)
    if report is None:
        return code
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
