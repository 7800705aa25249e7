"""pyflue's sandbox overhead against the raw Docker SDK (docker-py), side by side.

Three comparisons, raw and pyflue iterations interleaved (alternating which goes first) on the
same engine, so the machine's noise hits both sides alike:

(a) end to end: ``Runner.run`` of a trivial workflow (``ctx.init(agent)``,
    ``harness.shell("true")``, return a result) with the real SqlStore (SQLite under /tmp),
    RunRecorder and DockerProvider, against docker-py doing the same hardened volume create +
    container create + start + exec + container remove + volume remove, with the arguments from
    ``pyflue.sandbox.docker.lifecycle.container_config`` / ``volume_options``;
(b) ``harness.shell("true")`` against ``exec_create`` + ``exec_start`` + ``exec_inspect`` of
    ``sh -c true`` in the same, already-running run container;
(c) ``harness.fs.write_file`` / ``harness.fs.read_bytes`` of a 50 MiB file against
    ``put_archive`` (of a tar built with ``tarfile``) / ``get_archive`` (unpacked with
    ``tarfile``) of the same bytes in the same container.

Raw calls are plain blocking docker-py calls on the main thread, as a synchronous docker-py user
would make them. Ratios are pyflue / raw for times, pyflue / raw for throughput.

    .venv/bin/python benchmarks/bench_sandbox.py            # full run
    .venv/bin/python benchmarks/bench_sandbox.py --quick    # a smoke run
    .venv/bin/python benchmarks/bench_sandbox.py --json out.json

Exits 0 when every measurement ran (targets met or not), 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
from _common import machine, run_benchmark, say

from pyflue.models import RunStatus
from pyflue.runs import Runner
from pyflue.sandbox.base import SandboxSpec
from pyflue.sandbox.docker import lifecycle
from pyflue.sandbox.docker.lifecycle import (
    LABEL_RUN,
    LABEL_WORKFLOW,
    container_config,
    resource_name,
    volume_options,
)
from pyflue.settings import SandboxDefaults, Settings
from pyflue.wiring import open_runner

MiB = 1 << 20

TARGETS = {
    # name: (kind, limit) -- "time": pyflue/raw median time <= limit; "tput": ratio >= limit
    "a": ("time", 1.30),
    "b": ("time", 1.15),
    "c-write": ("tput", 0.80),
    "c-read": ("tput", 0.80),
}

TRIVIAL_WORKFLOW = '''\
"""Benchmark (a): the trivial run."""

from pyflue import create_agent

agent = create_agent(lambda ctx: {"cwd": "/workspace"})


async def run(ctx):
    harness = await ctx.init(agent)
    await harness.shell("true")
    return {"ok": True}
'''

SESSION_WORKFLOW = '''\
"""Benchmarks (b) and (c): hands the run's harness to a callback set by the benchmark."""

from pyflue import create_agent

agent = create_agent(lambda ctx: {"cwd": "/workspace"})

CALLBACK = None  # set by benchmarks/bench_sandbox.py before the run


async def run(ctx):
    harness = await ctx.init(agent)
    return await CALLBACK(ctx, harness)
'''


# -- statistics ----------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=10, method="inclusive")[8]


@dataclass
class Pair:
    """Interleaved samples of one comparison, in seconds."""

    name: str
    label: str
    raw: list[float] = field(default_factory=list)
    pyflue: list[float] = field(default_factory=list)
    nbytes: int = 0  # for throughput rows

    def add(self, raw: float, ours: float) -> None:
        self.raw.append(raw)
        self.pyflue.append(ours)

    def summary(self) -> dict[str, Any]:
        kind, limit = TARGETS[self.name]
        raw_med, py_med = median(self.raw), median(self.pyflue)
        paired = median([p / r for p, r in zip(self.pyflue, self.raw, strict=True)])
        out: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "n": len(self.raw),
            "raw_median_ms": raw_med * 1e3,
            "raw_p90_ms": p90(self.raw) * 1e3,
            "pyflue_median_ms": py_med * 1e3,
            "pyflue_p90_ms": p90(self.pyflue) * 1e3,
            "time_ratio": py_med / raw_med,
            "paired_time_ratio": paired,
            "target": f"{'<=' if kind == 'time' else '>='} {limit}x",
        }
        if kind == "time":
            out["ratio"] = out["time_ratio"]
            out["met"] = out["ratio"] <= limit
        else:
            mb = self.nbytes / MiB
            out["raw_mib_s"] = mb / raw_med
            out["pyflue_mib_s"] = mb / py_med
            out["ratio"] = raw_med / py_med  # throughput ratio pyflue / raw
            out["paired_ratio"] = 1 / paired
            out["met"] = out["ratio"] >= limit
        return out


# -- the raw docker-py side ----------------------------------------------------------------


def sandbox_spec(d: SandboxDefaults, run_id: str, workflow: str) -> SandboxSpec:
    """The spec pyflue's runner builds for the trivial agent (see runs._SandboxScope)."""
    return SandboxSpec(
        run_id=run_id, workflow=workflow, image=d.image, user=d.user, network=d.network,
        memory=d.memory, cpus=d.cpus, pids=d.pids, workspace_size=d.workspace_size,
        tmp_size=d.tmp_size, runtime=d.runtime, read_only_root=d.read_only_root,
    )


def raw_create_args(spec: SandboxSpec, volume: str, scope: str | None
                    ) -> tuple[dict[str, str], dict[str, Any]]:
    """The volume labels and ``containers.create`` arguments pyflue's provider uses.

    Follows the library: ``container_config`` takes the provider's store scope (and volumes get
    the scope label) in versions that scope the reaper per run store.
    """
    labels = {LABEL_RUN: spec.run_id, LABEL_WORKFLOW: spec.workflow}
    label_scope = getattr(lifecycle, "LABEL_SCOPE", None)
    if "scope" in inspect.signature(container_config).parameters:
        if label_scope is not None:
            labels[label_scope] = scope or "default"
        return labels, container_config(spec, volume, scope=scope or "default")
    return labels, container_config(spec, volume)  # type: ignore[call-arg,unused-ignore]


def raw_exec_true(api: Any, cid: str, spec: SandboxSpec) -> int:
    created = api.exec_create(cid, ["/bin/sh", "-c", "true"], stdout=True, stderr=True,
                              user=spec.user, workdir=spec.workdir)
    api.exec_start(created["Id"])
    code = int(api.exec_inspect(created["Id"])["ExitCode"])
    if code != 0:
        raise RuntimeError(f"raw exec of `true` exited {code}")
    return code


def raw_trivial_run(client: Any, defaults: SandboxDefaults, scope: str | None
                    ) -> tuple[float, dict[str, float]]:
    """(a) raw: volume + hardened container create, start, exec `true`, remove both."""
    spec = sandbox_spec(defaults, f"workflow:bench-raw:{uuid.uuid4().hex[:16]}", "bench-raw")
    volume = resource_name(spec.run_id)
    api = client.api
    cid = None
    marks = [time.perf_counter()]

    def remove() -> None:
        if cid is not None:
            api.remove_container(cid, force=True, v=True)
        api.remove_volume(volume, force=True)

    try:
        labels, config = raw_create_args(spec, volume, scope)
        client.volumes.create(volume, driver="local", driver_opts=volume_options(spec),
                              labels=labels)
        container = client.containers.create(**config)
        cid = container.id
        marks.append(time.perf_counter())
        container.start()
        marks.append(time.perf_counter())
        raw_exec_true(api, cid, spec)
        marks.append(time.perf_counter())
    except BaseException:
        with contextlib.suppress(docker.errors.DockerException):
            remove()
        raise
    remove()
    marks.append(time.perf_counter())
    phases = {name: t1 - t0 for name, t0, t1 in
              zip(("create", "start", "exec", "remove"), marks[:-1], marks[1:], strict=True)}
    return marks[-1] - marks[0], phases


def build_tar(name: str, data: bytes, uid: int, gid: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, time.time()
        info.uid, info.gid = uid, gid
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def raw_put(api: Any, cid: str, spec: SandboxSpec, name: str, data: bytes) -> None:
    uid, gid = spec.uid_gid
    if not api.put_archive(cid, spec.workdir, build_tar(name, data, uid, gid)):
        raise RuntimeError("put_archive returned False")


def raw_get(api: Any, cid: str, path: str) -> bytes:
    chunks, _stat = api.get_archive(cid, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r") as tar:
        member = tar.next()
        assert member is not None and member.isreg()
        f = tar.extractfile(member)
        assert f is not None
        return f.read()


# -- the pyflue side -----------------------------------------------------------------------


async def timed(coro: Awaitable[Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = await coro
    return time.perf_counter() - t0, value


async def pyflue_trivial_run(runner: Runner) -> tuple[float, dict[str, float]]:
    elapsed, run = await timed(runner.run("bench_trivial", {}))
    if run.status is not RunStatus.completed:
        raise await run_failed(runner, run)
    events = await runner.store.list_events(run.run_id)
    at = {e.type.value: e.timestamp for e in events}
    points = [
        ("submit+start", run.created_at, at["run_start"]),
        ("create", at["run_start"], at["container_created"]),
        ("start", at["container_created"], at["container_started"]),
        ("to shell", at["container_started"], at["shell_start"]),
        ("exec", at["shell_start"], at["shell_end"]),
        ("inspect", at["shell_end"], at["container_exited"]),
        ("remove", at["container_exited"], at["container_removed"]),
        ("finish", at["container_removed"], run.finished_at),
    ]
    return elapsed, {name: (t1 - t0).total_seconds() for name, t0, t1 in points}


class RunFailed(RuntimeError):
    def __init__(self, run: Any, events: list[Any]) -> None:
        self.run = run
        err = run.error
        self.text = f"{err.message}\n{err.details}" if err else str(run.reason)
        # A container that was no longer running when pyflue came to remove it, or that pyflue
        # could not remove, was removed by someone else.
        self.disturbed = any(
            (e.type.value == "container_exited" and e.data.get("stopped_by") != "pyflue")
            or (e.type.value == "container_removed" and not e.data.get("removed"))
            for e in events
        )
        super().__init__(f"pyflue run {run.run_id} ended {run.status.value}: "
                         f"{err.message if err else run.reason}")


async def run_failed(runner: Runner, run: Any) -> RunFailed:
    return RunFailed(run, await runner.store.list_events(run.run_id))


# Another pyflue process on the same engine (a test suite, `pyflue run`, `pyflue reap`) reaps
# every labelled container whose run is not in *its* store, so it may remove ours mid-iteration.
# Such an iteration is discarded and repeated (and counted), it is not a benchmark error.
INTERFERENCE = ("removal in progress", "no longer exists", "no such container",
                "is not running", "already in progress", "is restarting", "exited 137")
MAX_INTERFERENCE = 20


def interference(exc: BaseException) -> bool:
    if isinstance(exc, RunFailed) and exc.disturbed:
        return True
    text = (exc.text if isinstance(exc, RunFailed) else f"{exc!r} {exc}").lower()
    return any(marker in text for marker in INTERFERENCE)


# -- the benchmark -------------------------------------------------------------------------


def interleaved(i: int, raw: Callable[[], Any], ours: Callable[[], Awaitable[Any]]
                ) -> Awaitable[tuple[Any, Any]]:
    """Runs one raw and one pyflue iteration, raw first on even i, pyflue first on odd i.

    The raw side (blocking docker-py, timed inside itself) runs on a thread, so the event loop
    is free meanwhile, as an agent loop's is while it waits for its model: pyflue's background
    work (the recorder's store writes) happens there, not inside pyflue's next timed call."""

    async def go() -> tuple[Any, Any]:
        if i % 2 == 0:
            r = await asyncio.to_thread(raw)
            p = await ours()
        else:
            p = await ours()
            r = await asyncio.to_thread(raw)
        return r, p

    return go()


async def bench_a(runner: Runner, client: Any, n: int, warmup: int, stats: dict[str, int]
                  ) -> tuple[Pair, dict[str, Any]]:
    pair = Pair("a", "trivial run end to end")
    raw_phases: dict[str, list[float]] = {}
    py_phases: dict[str, list[float]] = {}
    defaults = runner.settings.sandbox
    scope = getattr(runner.provider, "scope", None)
    i = 0
    while i < warmup + n:
        try:
            (r, r_ph), (p, p_ph) = await interleaved(
                i,
                lambda: raw_trivial_run(client, defaults, scope),
                lambda: pyflue_trivial_run(runner),
            )
        except Exception as exc:
            if not interference(exc) or stats["interference"] >= MAX_INTERFERENCE:
                raise
            stats["interference"] += 1
            say(f"  (a) pair {i + 1} disturbed by another process removing the container; "
                "repeating it")
            continue
        if i >= warmup:
            pair.add(r, p)
            for phases, got in ((raw_phases, r_ph), (py_phases, p_ph)):
                for k, v in got.items():
                    phases.setdefault(k, []).append(v)
        say(f"  (a) {i + 1}/{warmup + n}: raw {r * 1e3:.0f} ms, pyflue {p * 1e3:.0f} ms")
        i += 1
    breakdown = {
        "raw": {k: median(v) * 1e3 for k, v in raw_phases.items()},
        "pyflue": {k: median(v) * 1e3 for k, v in py_phases.items()},
    }
    return pair, breakdown


async def bench_bc(runner: Runner, client: Any, nb: int, nc: int, size: int, warmup: int,
                   stats: dict[str, int]) -> list[Pair]:
    """(b) and (c), inside one run's container (a new run if another process reaps it)."""
    api = client.api
    spec = sandbox_spec(runner.settings.sandbox, "bench-session", "bench_session")
    data = os.urandom(size)
    b = Pair("b", 'shell("true") in a running container')
    w = Pair("c-write", f"write {size // MiB} MiB", nbytes=size)
    rd = Pair("c-read", f"read {size // MiB} MiB", nbytes=size)
    done = {"b": 0, "w": 0, "r": 0}  # pairs done, warm-up included: a retried run resumes

    async def session(ctx: Any, harness: Any) -> dict[str, Any]:
        cid = harness.sandbox_id

        def t_raw_exec() -> float:
            t0 = time.perf_counter()
            raw_exec_true(api, cid, spec)
            return time.perf_counter() - t0

        async def t_shell() -> float:
            elapsed, res = await timed(harness.shell("true"))
            if res["exit_code"] != 0:
                raise RuntimeError(f"harness.shell('true') exited {res['exit_code']}")
            return float(elapsed)

        while done["b"] < warmup + nb:
            r, p = await interleaved(done["b"], t_raw_exec, t_shell)
            if done["b"] >= warmup:
                b.add(r, p)
            done["b"] += 1
            if done["b"] % 25 == 0:
                say(f"  (b) {done['b']}/{warmup + nb} pairs")

        def t_raw_put() -> float:
            t0 = time.perf_counter()
            raw_put(api, cid, spec, "raw.bin", data)
            return time.perf_counter() - t0

        async def t_write() -> float:
            return float((await timed(harness.fs.write_file("pyflue.bin", data)))[0])

        while done["w"] < warmup + nc:
            r, p = await interleaved(done["w"], t_raw_put, t_write)
            if done["w"] >= warmup:
                w.add(r, p)
            done["w"] += 1
            say(f"  (c) write {done['w']}/{warmup + nc}: raw {r * 1e3:.0f} ms, "
                f"pyflue {p * 1e3:.0f} ms")

        # Both sides read the same file back, and the bytes are checked.
        if not await harness.fs.exists("pyflue.bin"):  # a new container after a retry
            await harness.fs.write_file("pyflue.bin", data)
        got: dict[str, bytes] = {}

        def t_raw_get() -> float:
            t0 = time.perf_counter()
            got["raw"] = raw_get(api, cid, f"{spec.workdir}/pyflue.bin")
            return time.perf_counter() - t0

        async def t_read() -> float:
            elapsed, got["pyflue"] = await timed(harness.fs.read_bytes("pyflue.bin"))
            return float(elapsed)

        while done["r"] < warmup + nc:
            r, p = await interleaved(done["r"], t_raw_get, t_read)
            if got.pop("raw") != data or got.pop("pyflue") != data:
                raise RuntimeError("read back different bytes than written")
            if done["r"] >= warmup:
                rd.add(r, p)
            done["r"] += 1
            say(f"  (c) read {done['r']}/{warmup + nc}: raw {r * 1e3:.0f} ms, "
                f"pyflue {p * 1e3:.0f} ms")
        return {"ok": True}

    setattr(runner.registry.get("bench_session").module, "CALLBACK", session)  # noqa: B010
    while True:
        run = await runner.run("bench_session", {})
        if run.status is RunStatus.completed:
            return [b, w, rd]
        failed = await run_failed(runner, run)
        if not interference(failed) or stats["interference"] >= MAX_INTERFERENCE:
            raise failed
        stats["interference"] += 1
        say("  (b)/(c) the run's container was removed by another process; resuming in a "
            "new run (the interrupted pair is discarded)")


def fmt_table(rows: list[dict[str, Any]]) -> str:
    head = ("bench", "n", "raw med", "raw p90", "pyflue med", "pyflue p90", "ratio",
            "paired", "target", "met")
    lines = []
    for s in rows:
        if s["name"].startswith("c-"):
            raw_med = f"{s['raw_median_ms']:.0f} ms ({s['raw_mib_s']:.0f} MiB/s)"
            py_med = f"{s['pyflue_median_ms']:.0f} ms ({s['pyflue_mib_s']:.0f} MiB/s)"
            ratio = f"{s['ratio']:.2f}x tput"
            paired = f"{s['paired_ratio']:.2f}x"
        else:
            raw_med = f"{s['raw_median_ms']:.1f} ms"
            py_med = f"{s['pyflue_median_ms']:.1f} ms"
            ratio = f"{s['ratio']:.2f}x time"
            paired = f"{s['paired_time_ratio']:.2f}x"
        lines.append((f"({s['name']}) {s['label']}", str(s["n"]), raw_med,
                      f"{s['raw_p90_ms']:.1f} ms", py_med, f"{s['pyflue_p90_ms']:.1f} ms",
                      ratio, paired, s["target"], "yes" if s["met"] else "NO"))
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    return "\n".join(out)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pyflue-bench-", dir="/tmp"))
    try:
        (tmp / "workflows").mkdir()
        (tmp / "workflows" / "bench_trivial.py").write_text(TRIVIAL_WORKFLOW)
        (tmp / "workflows" / "bench_session.py").write_text(SESSION_WORKFLOW)
        db = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        settings = Settings(project_dir=tmp, store_url=db)  # type: ignore[call-arg,unused-ignore]
        client = docker.from_env(timeout=120)
        stats = {"interference": 0}
        try:
            env = machine(client, docker_py=docker.__version__)
            say(f"machine: {json.dumps(env)}")
            client.images.get(settings.sandbox.image)  # fails early when the image is missing
            async with open_runner(settings) as runner:
                say(f"(a) trivial run end to end, {args.a} pairs (+{args.warmup} warm-up)")
                a, breakdown = await bench_a(runner, client, args.a, args.warmup, stats)
                say(f"(b)+(c) in one run's container: {args.b} exec pairs, "
                    f"{args.c} x {args.size_mb} MiB write/read pairs")
                bc = await bench_bc(runner, client, args.b, args.c, args.size_mb * MiB,
                                    args.warmup, stats)
        finally:
            client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": env, "results": [p.summary() for p in (a, *bc)],
            "breakdown_a_ms": breakdown, "repeated_after_interference": stats["interference"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="few iterations and a 10 MiB file: a smoke run, not a measurement")
    ap.add_argument("--a", type=int, help="pairs for (a) (default 15, quick 3)")
    ap.add_argument("--b", type=int, help="pairs for (b) (default 100, quick 10)")
    ap.add_argument("--c", type=int, help="pairs for (c) (default 5, quick 2)")
    ap.add_argument("--size-mb", type=int, help="file size in MiB for (c) (default 50)")
    ap.add_argument("--warmup", type=int, default=1, help="discarded pairs first (default 1)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = ap.parse_args(argv)
    quick = args.quick
    args.a = args.a or (3 if quick else 15)
    args.b = args.b or (10 if quick else 100)
    args.c = args.c or (2 if quick else 5)
    args.size_mb = args.size_mb or (10 if quick else 50)
    if min(args.a, args.b, args.c, args.size_mb) < 1 or args.warmup < 0:
        ap.error("iteration counts and size must be positive")

    report, code = run_benchmark(main_async, args, "benchmarks/bench_sandbox.py", argv)
    if report is None:
        return code

    m = report["machine"]
    print(f"machine: nproc {m['nproc']}, Docker {m['docker_server_version']} "
          f"({m['storage_driver']}, cgroup {m['cgroup']}), kernel {m['kernel']}, "
          f"Python {m['python']}, docker-py {m['docker_py']}; load avg before "
          f"{m['load_avg_before']} after {m['load_avg_after']}; {report['wall_s']} s")
    print()
    print(fmt_table(report["results"]))
    print()
    print("ratio: pyflue median / raw median (times), or pyflue / raw median throughput (c);")
    print("paired: median of the per-pair ratios (same convention).")
    print()
    bd = report["breakdown_a_ms"]
    print("(a) where the time goes, medians in ms:")
    print("  raw:    " + ", ".join(f"{k} {v:.1f}" for k, v in bd["raw"].items()))
    print("  pyflue: " + ", ".join(f"{k} {v:.1f}" for k, v in bd["pyflue"].items()))
    if report["repeated_after_interference"]:
        print(f"repeated {report['repeated_after_interference']} pair(s)/session(s) whose "
              "container another pyflue process on this engine removed (its reaper)")
    print()
    for s in report["results"]:
        verdict = "met" if s["met"] else "MISSED"
        print(f"target ({s['name']}) {s['label']}: {s['ratio']:.2f}x, want {s['target']}: "
              f"{verdict}")
    if quick:
        print("\n(--quick: too few iterations to judge the targets)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
