"""The control plane's cost: a real ``pyflue serve`` process against the in-process Runner.

Two measurements in one run, against one server process started here (``python -m pyflue.cli
serve`` on a free 127.0.0.1 port, its own SQLite store in a temporary folder, the project's
``PYFLUE_MAX_CONCURRENCY`` set to the number of active runs below):

(1) HTTP overhead: a trivial workflow with no container (``async def run(ctx): return {"ok":
    True}``) invoked with ``POST /workflows/trivial?wait=result`` over one keep-alive httpx
    client, interleaved (alternating which goes first) with ``await runner.run("trivial", {})``
    on a Runner built in this process as ``pyflue/wiring.py`` builds it (``open_runner`` over a
    second SQLite store). Reported: p50/p90/p99 of each side and the difference of the p50s.
    Target: the HTTP path adds at most 15 ms at p50.
(2) API latency under load: ``GET /runs/{id}``, sequential from one client, ids cycling, first
    with no run active (ids of finished runs), then with 50 runs active at once, each in its
    own container (``ctx.init(agent)`` + ``harness.shell("sleep N")``); the load is measured
    only once all 50 runs are ``running``, their containers running and their ``sleep`` started.
    Target: p99 under load below 100 ms. The 50 runs are then cancelled (``POST
    /runs/{id}/cancel``) and the benchmark checks that no container or volume labelled with
    their run ids is left (and removes any it finds, reporting them as an error).

    .venv/bin/python benchmarks/bench_api.py            # full run
    .venv/bin/python benchmarks/bench_api.py --quick    # a smoke run
    .venv/bin/python benchmarks/bench_api.py --json out.json

Exits 0 when every measurement ran (targets met or not), 1 on an error (including containers
left behind), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
from _common import machine, run_benchmark, say

from pyflue.models import RunStatus
from pyflue.sandbox.docker.lifecycle import LABEL_RUN, LABEL_SCOPE
from pyflue.settings import Settings
from pyflue.wiring import open_runner, store_scope

HTTP_OVERHEAD_P50_MS = 15.0  # (1): HTTP p50 - in-process p50 <= this
LOAD_P99_MS = 100.0  # (2): GET /runs/{id} p99 with the runs active < this

TRIVIAL_WORKFLOW = '''\
"""Benchmark (1): no container, nothing but a result."""


async def run(ctx):
    return {"ok": True}
'''

SLEEPER_WORKFLOW = '''\
"""Benchmark (2): one container per run, busy with a long `sleep` until cancelled."""

from pyflue import create_agent

agent = create_agent(lambda ctx: {"cwd": "/workspace"})


async def run(ctx):
    harness = await ctx.init(agent)
    await harness.shell(f"sleep {int(ctx.payload.get('seconds', 20))}")
    return {"ok": True}
'''


# -- statistics ----------------------------------------------------------------------------


def pct(xs: list[float], q: int) -> float:
    """The q-th percentile (inclusive method; p50 is the median)."""
    if len(xs) == 1:
        return xs[0]
    if q == 50:
        return statistics.median(xs)
    return statistics.quantiles(xs, n=100, method="inclusive")[q - 1]


def summary(xs: list[float]) -> dict[str, Any]:
    """Percentiles in ms of samples in seconds."""
    return {"n": len(xs), "p50_ms": pct(xs, 50) * 1e3, "p90_ms": pct(xs, 90) * 1e3,
            "p99_ms": pct(xs, 99) * 1e3, "max_ms": max(xs) * 1e3,
            "mean_ms": statistics.fmean(xs) * 1e3}


def medians_ms(phases: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) * 1e3 for k, v in phases.items()}


# -- the server process --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0.0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``pyflue serve`` as a subprocess, as tests/integration/test_server.py starts it."""

    def __init__(self, project: Path, store: Path, concurrency: int) -> None:
        self.project, self.store_path, self.concurrency = project, store, concurrency
        self.store_url = f"sqlite+aiosqlite:///{store}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = store.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def scope(self) -> str:
        """The scope label of every container this server creates (see pyflue.wiring)."""
        return store_scope(Settings(project_dir=self.project, store_url=self.store_url))  # type: ignore[call-arg,unused-ignore]

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "PYFLUE_STORE_URL": self.store_url,
               "PYFLUE_MAX_CONCURRENCY": str(self.concurrency)}
        env.pop("PYFLUE_API_TOKEN", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyflue.cli", "serve", "--port", str(self.port)],
                cwd=self.project, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not come up in {timeout:g} s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """SIGTERM (the scheduler interrupts what still runs and removes its containers)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            say("  the server did not stop within 90 s of SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait(timeout=30)


# -- (1) HTTP against in process -----------------------------------------------------------


@dataclass
class Overhead:
    http: list[float] = field(default_factory=list)
    local: list[float] = field(default_factory=list)
    http_phases: dict[str, list[float]] = field(default_factory=dict)
    local_phases: dict[str, list[float]] = field(default_factory=dict)
    http_ids: list[str] = field(default_factory=list)


def _phases(t_send: float, t_recv: float, run: dict[str, Any]) -> dict[str, float]:
    """Where one trivial run's time went, from the record's timestamps (wall clock, one host)."""

    def ts(key: str) -> float:
        value = run[key]
        return (datetime.fromisoformat(value) if isinstance(value, str) else value).timestamp()

    created, started, finished = ts("created_at"), ts("started_at"), ts("finished_at")
    return {
        "call -> record created": created - t_send,
        "created -> started": started - created,
        "started -> finished": finished - started,
        "finished -> answer": t_recv - finished,
    }


async def http_trivial(client: httpx.AsyncClient) -> tuple[float, str, dict[str, float]]:
    w0, t0 = time.time(), time.perf_counter()
    r = await client.post("/workflows/trivial?wait=result", json={})
    elapsed, w1 = time.perf_counter() - t0, time.time()
    if r.status_code != 200 or r.json().get("result") != {"ok": True}:
        raise RuntimeError(f"POST /workflows/trivial?wait=result: {r.status_code} {r.text[:500]}")
    run_id = r.headers["x-flue-run-id"]
    record = (await client.get(f"/runs/{run_id}")).json()  # not timed: for the breakdown
    return elapsed, run_id, _phases(w0, w1, record)


async def local_trivial(runner: Any) -> tuple[float, dict[str, float]]:
    w0, t0 = time.time(), time.perf_counter()
    run = await runner.run("trivial", {})
    elapsed, w1 = time.perf_counter() - t0, time.time()
    if run.status is not RunStatus.completed or run.result != {"ok": True}:
        raise RuntimeError(f"in-process run {run.run_id} ended {run.status.value}: {run.error}")
    return elapsed, _phases(w0, w1, run.model_dump())


async def bench_overhead(client: httpx.AsyncClient, runner: Any, n: int, warmup: int) -> Overhead:
    out = Overhead()
    for i in range(warmup + n):
        if i % 2 == 0:
            h, run_id, h_ph = await http_trivial(client)
            loc, l_ph = await local_trivial(runner)
        else:
            loc, l_ph = await local_trivial(runner)
            h, run_id, h_ph = await http_trivial(client)
        out.http_ids.append(run_id)
        if i >= warmup:
            out.http.append(h)
            out.local.append(loc)
            for phases, got in ((out.http_phases, h_ph), (out.local_phases, l_ph)):
                for k, v in got.items():
                    phases.setdefault(k, []).append(v)
        if (i + 1) % 25 == 0 or i + 1 == warmup + n:
            say(f"  (1) {i + 1}/{warmup + n} pairs (last: http {h * 1e3:.1f} ms, "
                f"in process {loc * 1e3:.1f} ms)")
    return out


# -- (2) GET /runs/{id} idle and under load ------------------------------------------------


async def get_runs_latency(client: httpx.AsyncClient, ids: list[str], n: int) -> list[float]:
    """n sequential ``GET /runs/{id}``, ids cycling; seconds per request."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await client.get(f"/runs/{ids[i % len(ids)]}")
        out.append(time.perf_counter() - t0)
        if r.status_code != 200:
            raise RuntimeError(f"GET /runs/{ids[i % len(ids)]}: {r.status_code} {r.text[:300]}")
    return out


async def get_latency(client: httpx.AsyncClient, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = await client.get(path)
        out.append(time.perf_counter() - t0)
        r.raise_for_status()
    return out


def labelled(dclient: Any, run_ids: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Containers (with their state) and volume names labelled with one of these run ids."""
    found = dclient.api.containers(all=True, filters={"label": LABEL_RUN})
    containers = [c for c in found if c["Labels"].get(LABEL_RUN) in run_ids]
    vols = dclient.api.volumes(filters={"label": LABEL_RUN}).get("Volumes") or []
    volumes = [v["Name"] for v in vols if (v.get("Labels") or {}).get(LABEL_RUN) in run_ids]
    return containers, volumes


async def statuses(client: httpx.AsyncClient, ids: set[str]) -> dict[str, str]:
    """The status of each of these runs (one list call; they are the newest runs)."""
    r = await client.get("/runs", params={"limit": 500})
    r.raise_for_status()
    return {run["run_id"]: run["status"] for run in r.json()["runs"] if run["run_id"] in ids}


async def running_ids(client: httpx.AsyncClient, ids: set[str]) -> set[str]:
    return {i for i, s in (await statuses(client, ids)).items() if s == "running"}


async def ramp_up(client: httpx.AsyncClient, dclient: Any, active: int, sleep_s: int,
                  timeout: float) -> dict[str, Any]:
    """Submits the runs and waits until all are running with their `sleep` started.

    Meanwhile one prober sends sequential ``GET /runs/{id}`` (informational: latency while
    containers are being created).
    """
    t0 = time.perf_counter()
    posts = await asyncio.gather(*(
        client.post("/workflows/sleeper", json={"seconds": sleep_s}) for _ in range(active)))
    submit_s = time.perf_counter() - t0
    bad = [r for r in posts if r.status_code != 202]
    if bad:
        raise RuntimeError(f"POST /workflows/sleeper: {bad[0].status_code} {bad[0].text[:300]}")
    ids = [r.json()["run_id"] for r in posts]
    wanted = set(ids)
    probe: list[float] = []
    ready = asyncio.Event()

    async def prober() -> None:
        i = 0
        while not ready.is_set():
            t = time.perf_counter()
            r = await client.get(f"/runs/{ids[i % len(ids)]}")
            probe.append(time.perf_counter() - t)
            r.raise_for_status()
            i += 1

    probing = asyncio.create_task(prober())
    shell_started: set[str] = set()
    state: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + timeout
        while True:
            for run_id in wanted - shell_started:
                r = await client.get(f"/runs/{run_id}/events",
                                     params={"types": "shell_start", "limit": 1})
                r.raise_for_status()
                if r.json()["events"]:
                    shell_started.add(run_id)
            status = await statuses(client, wanted)
            running = {i for i, s in status.items() if s == "running"}
            ended = {i: s for i, s in status.items() if s not in ("queued", "running")}
            if ended:
                raise RuntimeError(f"load run(s) ended before the load was measured: {ended}")
            containers, _ = await asyncio.to_thread(labelled, dclient, wanted)
            live = {c["Labels"][LABEL_RUN] for c in containers if c["State"] == "running"}
            state = {"running": len(running), "containers_running": len(live),
                     "shell_started": len(shell_started)}
            if len(running) == len(live) == len(shell_started) == active:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {active} runs were running after {timeout:g} s: "
                                   f"{state}")
            say(f"  (2) ramp-up {time.perf_counter() - t0:.0f} s: {state}")
            await asyncio.sleep(1.0)
    finally:
        ready.set()
        await probing
    return {"ids": ids, "submit_s": submit_s, "ready_s": time.perf_counter() - t0,
            "probe": probe, "state": state}


async def cancel_all(client: httpx.AsyncClient, dclient: Any, ids: list[str],
                     timeout: float = 180.0) -> dict[str, Any]:
    """Cancels the runs, waits until they have ended, and checks nothing labelled is left."""
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(client.post(f"/runs/{i}/cancel") for i in ids),
                                   return_exceptions=True)
    problems = [a for a in answers if isinstance(a, BaseException) or a.status_code not in
                (202, 409)]
    if problems:
        say(f"  cancel answered unexpectedly: {problems[:3]}")
    wanted = set(ids)
    deadline = time.monotonic() + timeout
    ended: dict[str, str] = {}
    while time.monotonic() < deadline:
        ended = {i: s for i, s in (await statuses(client, wanted)).items()
                 if s not in ("queued", "running")}
        if len(ended) == len(wanted):
            break
        await asyncio.sleep(0.5)
    ended_s = time.perf_counter() - t0
    # The record is final only after the container is gone (pyflue/runs.py), so nothing
    # should be left by now; allow the engine a moment anyway before calling it a leak.
    containers, volumes = await asyncio.to_thread(labelled, dclient, wanted)
    for _ in range(20):
        if not containers and not volumes:
            break
        await asyncio.sleep(0.5)
        containers, volumes = await asyncio.to_thread(labelled, dclient, wanted)
    leaked = {"containers": [c["Id"][:12] for c in containers], "volumes": volumes}
    if containers or volumes:
        await asyncio.to_thread(remove, dclient, [c["Id"] for c in containers], volumes)
    counts: dict[str, int] = {}
    for s in ended.values():
        counts[s] = counts.get(s, 0) + 1
    odd = {}  # why a run did not end `cancelled`
    for run_id, s in ended.items():
        if s != "cancelled":
            run = (await client.get(f"/runs/{run_id}")).json()
            err = run.get("error") or {}
            odd[run_id] = f"{s}: {err.get('type')}: {err.get('message')} ({run.get('reason')})"
    return {"ended_s": ended_s, "statuses": counts, "not_cancelled": odd,
            "not_ended": len(wanted) - len(ended),
            "leaked": leaked}


def remove(dclient: Any, containers: list[str], volumes: list[str]) -> None:
    for cid in containers:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            dclient.api.remove_container(cid, force=True, v=True)
    for name in volumes:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            dclient.api.remove_volume(name, force=True)


def sweep_scope(dclient: Any, scope: str) -> int:
    """Removes whatever a store scope still has on the engine (after errors); returns a count."""
    found = dclient.api.containers(all=True, filters={"label": f"{LABEL_SCOPE}={scope}"})
    vols = dclient.api.volumes(filters={"label": f"{LABEL_SCOPE}={scope}"}).get("Volumes") or []
    remove(dclient, [c["Id"] for c in found], [v["Name"] for v in vols])
    return len(found) + len(vols)


# -- the benchmark -------------------------------------------------------------------------


def api_machine(dclient: Any) -> dict[str, Any]:
    def has(mod: str) -> bool:
        try:
            __import__(mod)
        except ImportError:
            return False
        return True

    import fastapi
    import uvicorn

    return machine(
        dclient, containers_on_engine_before=dclient.info().get("ContainersRunning"),
        fastapi=fastapi.__version__, uvicorn=uvicorn.__version__, uvloop=has("uvloop"),
        httptools=has("httptools"), httpx=httpx.__version__,
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pyflue-bench-api-", dir="/tmp"))
    report: dict[str, Any] = {}
    errors: list[str] = []
    warnings: list[str] = []  # reported, but the measurement stands
    dclient = docker.from_env(timeout=120)
    server: Server | None = None
    load_ids: list[str] = []
    cleaned = False
    try:
        (tmp / "workflows").mkdir()
        (tmp / "workflows" / "trivial.py").write_text(TRIVIAL_WORKFLOW)
        (tmp / "workflows" / "sleeper.py").write_text(SLEEPER_WORKFLOW)
        report["machine"] = api_machine(dclient)
        say(f"machine: {json.dumps(report['machine'])}")
        dclient.images.get(Settings().sandbox.image)  # fails early when the image is missing

        server = Server(tmp, tmp / "server.db", concurrency=args.active)
        say(f"starting `pyflue serve` on {server.url} (PYFLUE_MAX_CONCURRENCY={args.active})")
        server.start()
        settings = Settings(project_dir=tmp,  # type: ignore[call-arg,unused-ignore]
                            store_url=f"sqlite+aiosqlite:///{tmp / 'local.db'}")
        limits = httpx.Limits(max_connections=args.active + 10,
                              max_keepalive_connections=args.active + 10)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits,
                                     trust_env=False) as client, \
                httpx.AsyncClient(base_url=server.url, timeout=120, trust_env=False) as probe:
            # (1)
            say(f"(1) trivial workflow: HTTP ?wait=result against in-process Runner.run, "
                f"{args.n} pairs (+{args.warmup} warm-up)")
            cpu0, w0 = server.cpu_seconds(), time.monotonic()
            async with open_runner(settings) as runner:
                ov = await bench_overhead(client, runner, args.n, args.warmup)
            report["server_cpu_1"] = (server.cpu_seconds() - cpu0) / (time.monotonic() - w0)
            report["overhead"] = {
                "http": summary(ov.http), "local": summary(ov.local),
                "p50_diff_ms": (pct(ov.http, 50) - pct(ov.local, 50)) * 1e3,
                "paired_diff_ms": statistics.median(
                    [h - loc for h, loc in zip(ov.http, ov.local, strict=True)]) * 1e3,
                "http_phases_ms": medians_ms(ov.http_phases),
                "local_phases_ms": medians_ms(ov.local_phases),
            }
            report["overhead"]["met"] = report["overhead"]["p50_diff_ms"] <= HTTP_OVERHEAD_P50_MS

            # (2) idle baseline: ids of finished runs
            idle_ids = ov.http_ids[-args.active:]
            await get_runs_latency(probe, idle_ids, min(50, args.requests))  # warm-up
            say(f"(2) GET /runs/{{id}} x {args.requests}, no run active")
            cpu0, w0 = server.cpu_seconds(), time.monotonic()
            idle = await get_runs_latency(probe, idle_ids, args.requests)
            report["server_cpu_idle"] = (server.cpu_seconds() - cpu0) / (time.monotonic() - w0)
            health = await get_latency(probe, "/health", args.requests)  # the HTTP floor

            say(f"(2) starting {args.active} runs (`sleep {args.sleep}` each, in containers)")
            cpu0, w0 = server.cpu_seconds(), time.monotonic()
            ramp = await ramp_up(client, dclient, args.active, args.sleep, args.ramp_timeout)
            load_ids = ramp["ids"]
            report["server_cpu_ramp"] = (server.cpu_seconds() - cpu0) / (time.monotonic() - w0)
            say(f"  all {args.active} running after {ramp['ready_s']:.1f} s; settling "
                f"{args.settle:g} s")
            await asyncio.sleep(args.settle)
            say(f"(2) GET /runs/{{id}} x {args.requests}, {args.active} runs active")
            cpu0, w0 = server.cpu_seconds(), time.monotonic()
            loaded = await get_runs_latency(probe, load_ids, args.requests)
            report["server_cpu_load"] = (server.cpu_seconds() - cpu0) / (time.monotonic() - w0)
            still = await running_ids(client, set(load_ids))
            containers, _ = await asyncio.to_thread(labelled, dclient, set(load_ids))
            still_containers = sum(1 for c in containers if c["State"] == "running")
            if len(still) < args.active or still_containers < args.active:
                errors.append(f"only {len(still)} runs / {still_containers} containers were "
                              f"still running at the end of the load measurement")

            say(f"(2) cancelling the {args.active} runs")
            cleanup = await cancel_all(client, dclient, load_ids)
            cleaned = True
            if cleanup["not_ended"]:
                errors.append(f"{cleanup['not_ended']} cancelled run(s) had not ended")
            if cleanup["not_cancelled"]:
                warnings.append(f"{len(cleanup['not_cancelled'])} run(s) did not end cancelled "
                              "after POST /runs/{id}/cancel")
            if cleanup["leaked"]["containers"] or cleanup["leaked"]["volumes"]:
                errors.append(f"left behind after cancel (now removed by the benchmark): "
                              f"{cleanup['leaked']}")
            say(f"  ended in {cleanup['ended_s']:.1f} s: {cleanup['statuses']}; left behind: "
                f"{cleanup['leaked']}")

            say(f"(2) GET /runs/{{id}} x {args.requests}, idle again (the cancelled runs)")
            after = await get_runs_latency(probe, load_ids, args.requests)

            report["load"] = {
                "health": summary(health),
                "idle": summary(idle),
                "ramp_up": summary(ramp["probe"]) if ramp["probe"] else None,
                "active": summary(loaded),
                "idle_after": summary(after),
                "ready_s": ramp["ready_s"],
                "submit_s": ramp["submit_s"],
                "still_running_after": len(still),
                "containers_running_after": still_containers,
                "cleanup": cleanup,
            }
            report["load"]["met"] = report["load"]["active"]["p99_ms"] < LOAD_P99_MS
    finally:
        try:
            if server is not None and load_ids and not cleaned:
                say("cleaning up after an error: cancelling the load runs")
                with contextlib.suppress(Exception):
                    async with httpx.AsyncClient(base_url=server.url, timeout=30,
                                                 trust_env=False) as c:
                        await asyncio.gather(*(c.post(f"/runs/{i}/cancel") for i in load_ids),
                                             return_exceptions=True)
            if server is not None:
                server.stop()
                left = await asyncio.to_thread(sweep_scope, dclient, server.scope)
                if left:
                    errors.append(f"removed {left} container(s)/volume(s) of the server's "
                                  "store left after it stopped")
                # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly
                if server.proc is not None and server.proc.returncode not in (
                        0, None, -signal.SIGTERM):
                    say(f"the server exited {server.proc.returncode}; its log:\n"
                        f"{server.log_tail()}")
        finally:
            dclient.close()
            if args.keep:
                say(f"kept {tmp} (server log: {tmp / 'server.log'})")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    report["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["errors"] = errors
    report["warnings"] = warnings
    return report


def fmt_table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    m = report["machine"]
    print(f"machine: nproc {m['nproc']}, {m['memory_gib']} GiB, Docker "
          f"{m['docker_server_version']} ({m['storage_driver']}, cgroup {m['cgroup']}), kernel "
          f"{m['kernel']}, Python {m['python']}, FastAPI {m['fastapi']}, uvicorn {m['uvicorn']} "
          f"(uvloop {'yes' if m['uvloop'] else 'no'}, httptools "
          f"{'yes' if m['httptools'] else 'no'}), httpx {m['httpx']}; load avg before "
          f"{m['load_avg_before']} after {m['load_avg_after']}; {report['wall_s']} s")
    print()

    def ms(x: float) -> str:
        return f"{x:.1f} ms"

    ov, ld = report["overhead"], report["load"]
    rows = [
        ("(1) trivial run, in process (Runner.run)", str(ov["local"]["n"]),
         ms(ov["local"]["p50_ms"]), ms(ov["local"]["p90_ms"]), ms(ov["local"]["p99_ms"]), "", ""),
        ("(1) trivial run, POST ?wait=result", str(ov["http"]["n"]), ms(ov["http"]["p50_ms"]),
         ms(ov["http"]["p90_ms"]), ms(ov["http"]["p99_ms"]),
         f"p50 diff {ov['p50_diff_ms']:+.1f} ms (paired {ov['paired_diff_ms']:+.1f})",
         f"<= +{HTTP_OVERHEAD_P50_MS:g} ms: {'yes' if ov['met'] else 'NO'}"),
        ("(2) GET /health, no run active (info)", str(ld["health"]["n"]),
         ms(ld["health"]["p50_ms"]), ms(ld["health"]["p90_ms"]), ms(ld["health"]["p99_ms"]),
         "", ""),
        ("(2) GET /runs/{id}, no run active", str(ld["idle"]["n"]), ms(ld["idle"]["p50_ms"]),
         ms(ld["idle"]["p90_ms"]), ms(ld["idle"]["p99_ms"]), "", ""),
    ]
    if ld["ramp_up"]:
        r = ld["ramp_up"]
        rows.append(("(2) GET /runs/{id}, during ramp-up (info)", str(r["n"]),
                     ms(r["p50_ms"]), ms(r["p90_ms"]), ms(r["p99_ms"]), "", ""))
    rows += [
        (f"(2) GET /runs/{{id}}, {args.active} runs active", str(ld["active"]["n"]),
         ms(ld["active"]["p50_ms"]), ms(ld["active"]["p90_ms"]), ms(ld["active"]["p99_ms"]),
         f"max {ld['active']['max_ms']:.1f} ms",
         f"p99 < {LOAD_P99_MS:g} ms: {'yes' if ld['met'] else 'NO'}"),
        ("(2) GET /runs/{id}, idle again (info)", str(ld["idle_after"]["n"]),
         ms(ld["idle_after"]["p50_ms"]), ms(ld["idle_after"]["p90_ms"]),
         ms(ld["idle_after"]["p99_ms"]), "", ""),
    ]
    print(fmt_table(("measurement", "n", "p50", "p90", "p99", "", "target"), rows))
    print()
    print("(1) where the time goes, medians in ms (from the run records' timestamps):")
    for side, key in (("in process", "local_phases_ms"), ("HTTP", "http_phases_ms")):
        print(f"  {side + ':':12}" + ", ".join(f"{k} {v:.1f}" for k, v in ov[key].items()))
    print(f"(2) {args.active} runs submitted in {ld['submit_s']:.2f} s, all running with their "
          f"`sleep` started after {ld['ready_s']:.1f} s; still running after the measurement: "
          f"{ld['still_running_after']} runs, {ld['containers_running_after']} containers")
    c = ld["cleanup"]
    print(f"    cancelled: all ended in {c['ended_s']:.1f} s ({c['statuses']}); containers or "
          f"volumes left: {len(c['leaked']['containers'])} / {len(c['leaked']['volumes'])}")
    for run_id, why in c["not_cancelled"].items():
        print(f"    NOT cancelled: {run_id}: {why}")
    print(f"server CPU (share of one core): (1) {report['server_cpu_1']:.0%}, idle GETs "
          f"{report['server_cpu_idle']:.0%}, ramp-up {report['server_cpu_ramp']:.0%}, "
          f"GETs under load {report['server_cpu_load']:.0%}")
    print()
    print(f"target (1) HTTP adds at most {HTTP_OVERHEAD_P50_MS:g} ms at p50: "
          f"{ov['p50_diff_ms']:+.1f} ms: {'met' if ov['met'] else 'MISSED'}")
    print(f"target (2) GET /runs/{{id}} p99 with {args.active} runs active below "
          f"{LOAD_P99_MS:g} ms: {ld['active']['p99_ms']:.1f} ms: "
          f"{'met' if ld['met'] else 'MISSED'}")
    if args.quick:
        print("\n(--quick: too few iterations and runs to judge the targets)")
    for w in report["warnings"]:
        print(f"WARNING: {w}")
    for e in report["errors"]:
        print(f"ERROR: {e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="20 pairs, 5 active runs, 100 requests: a smoke run, not a measurement")
    ap.add_argument("--n", type=int, help="pairs for (1) (default 200, quick 20)")
    ap.add_argument("--warmup", type=int, help="discarded pairs first (default 10, quick 3)")
    ap.add_argument("--active", type=int, help="runs active at once for (2) (default 50, "
                    "quick 5); also the server's PYFLUE_MAX_CONCURRENCY")
    ap.add_argument("--requests", type=int, help="GET /runs/{id} per measurement (default 500, "
                    "quick 100)")
    ap.add_argument("--sleep", type=int, default=900,
                    help="seconds each load run sleeps; they are cancelled once measured, so "
                    "this only needs to outlast the ramp-up and measurement (default 900)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to wait once all runs are up, before measuring (default 2)")
    ap.add_argument("--ramp-timeout", type=float, default=600.0,
                    help="seconds allowed for all runs to be up (default 600)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (server log)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = ap.parse_args(argv)
    quick = args.quick
    args.n = args.n or (20 if quick else 200)
    args.warmup = args.warmup if args.warmup is not None else (3 if quick else 10)
    args.active = args.active or (5 if quick else 50)
    args.requests = args.requests or (100 if quick else 500)
    if min(args.n, args.active, args.requests, args.sleep) < 1 or args.warmup < 0:
        ap.error("counts must be positive")

    report, code = run_benchmark(main_async, args, "benchmarks/bench_api.py", argv)
    if report is None:
        return code
    print_report(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
