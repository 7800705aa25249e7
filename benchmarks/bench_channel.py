"""The sandbox channel (docs/sandbox.md#the-channel) against the raw Docker SDK, side by side.

In one run's container (a hardened run made by the real Runner, SQLite store), raw and pyflue
iterations interleaved (alternating which goes first):

(shell)   ``harness.shell("true")`` against docker-py's ``exec_create`` + ``exec_start`` +
          ``exec_inspect`` of ``sh -c true`` (what a raw ``docker exec`` costs);
(1k-write, 1k-read)  ``harness.fs.write_file`` / ``harness.fs.read_bytes`` of 1 KiB, against
          ``put_archive`` / ``get_archive`` of the same bytes;
(50m-write, 50m-read) the same with 50 MiB: throughput against the raw archive API's.

    .venv/bin/python benchmarks/bench_channel.py                  # runc, full run
    .venv/bin/python benchmarks/bench_channel.py --runtime runsc  # under gVisor
    .venv/bin/python benchmarks/bench_channel.py --quick          # a smoke run

Targets (issue 11): shell p50 <= 2.5 ms and <= 0.05x raw; 1 KiB write and read p50 <= 2 ms;
50 MiB write and read >= 0.8x the raw archive API's throughput. Exits 0 when every measurement
ran (targets met or not), 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
from _common import machine, run_benchmark, say
from bench_sandbox import (
    SESSION_WORKFLOW,
    interleaved,
    raw_exec_true,
    raw_get,
    raw_put,
    run_failed,
    sandbox_spec,
    timed,
)

from pyflue.events import EventType
from pyflue.models import RunStatus
from pyflue.settings import SandboxDefaults, Settings
from pyflue.wiring import open_runner

MiB = 1 << 20


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def row(name: str, raw: list[float], ours: list[float], nbytes: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "n": len(ours), "raw_p50_ms": p50(raw) * 1e3,
                           "pyflue_p50_ms": p50(ours) * 1e3,
                           "time_ratio": p50(ours) / p50(raw)}
    if nbytes:
        out["raw_mib_s"] = nbytes / MiB / p50(raw)
        out["pyflue_mib_s"] = nbytes / MiB / p50(ours)
        out["tput_ratio"] = p50(raw) / p50(ours)
    return out


def verdicts(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    sh, w1, r1 = rows["shell"], rows["1k-write"], rows["1k-read"]
    w50, r50 = rows["50m-write"], rows["50m-read"]
    return [
        ("shell p50 <= 2.5 ms", f"{sh['pyflue_p50_ms']:.2f} ms", sh["pyflue_p50_ms"] <= 2.5),
        ("shell <= 0.05x raw docker exec", f"{sh['time_ratio']:.3f}x", sh["time_ratio"] <= 0.05),
        ("1 KiB write_file p50 <= 2 ms", f"{w1['pyflue_p50_ms']:.2f} ms", w1["pyflue_p50_ms"] <= 2),
        ("1 KiB read_file p50 <= 2 ms", f"{r1['pyflue_p50_ms']:.2f} ms", r1["pyflue_p50_ms"] <= 2),
        ("50 MiB write >= 0.8x raw", f"{w50['tput_ratio']:.2f}x", w50["tput_ratio"] >= 0.8),
        ("50 MiB read >= 0.8x raw", f"{r50['tput_ratio']:.2f}x", r50["tput_ratio"] >= 0.8),
    ]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pyflue-bench-", dir="/tmp"))
    results: dict[str, dict[str, Any]] = {}
    try:
        (tmp / "workflows").mkdir()
        (tmp / "workflows" / "bench_session.py").write_text(SESSION_WORKFLOW)
        settings = Settings(project_dir=tmp, store_url=f"sqlite+aiosqlite:///{tmp / 'b.db'}",
                            sandbox=SandboxDefaults(runtime=args.runtime))
        client = docker.from_env(timeout=120)
        api = client.api
        env = machine(client, docker_py=docker.__version__, runtime=args.runtime or "runc")
        say(f"machine: {json.dumps(env)}")
        spec = sandbox_spec(settings.sandbox, "bench-channel", "bench_session")
        small, big = os.urandom(1024), os.urandom(args.size_mb * MiB)

        async def session(ctx: Any, harness: Any) -> dict[str, Any]:
            cid = harness.sandbox_id

            async def pairs(name: str, n: int, raw: Any, ours: Any, nbytes: int = 0) -> None:
                r_times: list[float] = []
                p_times: list[float] = []
                for i in range(args.warmup + n):
                    r, p = await interleaved(i, raw, ours)
                    if i >= args.warmup:
                        r_times.append(r)
                        p_times.append(p)
                results[name] = row(name, r_times, p_times, nbytes)
                say(f"  {name}: raw {results[name]['raw_p50_ms']:.2f} ms, pyflue "
                    f"{results[name]['pyflue_p50_ms']:.2f} ms (p50 of {n})")

            def clock(fn: Any, *a: Any) -> Any:
                def go() -> float:
                    t0 = time.perf_counter()
                    fn(*a)
                    return time.perf_counter() - t0
                return go

            async def shell() -> float:
                elapsed, res = await timed(harness.shell("true"))
                assert res["exit_code"] == 0, res
                return float(elapsed)

            await pairs("shell", args.n, clock(raw_exec_true, api, cid, spec), shell)
            for label, data, n in (("1k", small, args.n), ("50m", big, args.c)):
                nbytes = len(data) if label == "50m" else 0

                async def write(data: bytes = data, label: str = label) -> float:
                    return float((await timed(harness.fs.write_file(f"{label}.bin", data)))[0])

                async def read(data: bytes = data, label: str = label) -> float:
                    elapsed, got = await timed(harness.fs.read_bytes(f"{label}.bin"))
                    assert got == data
                    return float(elapsed)

                def raw_read(label: str = label, data: bytes = data) -> None:
                    assert raw_get(api, cid, f"{spec.workdir}/raw-{label}.bin") == data

                await pairs(f"{label}-write", n,
                            clock(raw_put, api, cid, spec, f"raw-{label}.bin", data), write,
                            nbytes)
                await pairs(f"{label}-read", n, clock(raw_read), read, nbytes)
            return {"ok": True}

        try:
            async with open_runner(settings) as runner:
                setattr(runner.registry.get("bench_session").module, "CALLBACK", session)  # noqa: B010
                run = await runner.run("bench_session", {})
                if run.status is not RunStatus.completed:
                    raise await run_failed(runner, run)
                [started] = await runner.store.list_events(
                    run.run_id, types=[EventType.container_started])
                env["channel"] = started.data.get("channel")
                env["channel_reason"] = started.data.get("channel_reason")
        finally:
            client.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": env, "results": results,
            "targets": [{"target": t, "measured": m, "met": ok}
                        for t, m, ok in verdicts(results)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few iterations, a 10 MiB file")
    ap.add_argument("--n", type=int, help="pairs for shell and 1 KiB (default 200, quick 20)")
    ap.add_argument("--c", type=int, help="pairs for 50 MiB (default 5, quick 2)")
    ap.add_argument("--size-mb", type=int, help="the big file in MiB (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="discarded pairs first (default 3)")
    ap.add_argument("--runtime", help="the container runtime (default: the engine's, runc)")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = ap.parse_args(argv)
    args.n = args.n or (20 if args.quick else 200)
    args.c = args.c or (2 if args.quick else 5)
    args.size_mb = args.size_mb or (10 if args.quick else 50)
    report, code = run_benchmark(main_async, args, "benchmarks/bench_channel.py", argv)
    if report is None:
        return code
    m = report["machine"]
    print(f"machine: nproc {m['nproc']}, Docker {m['docker_server_version']}, runtime "
          f"{m['runtime']}, kernel {m['kernel']}, Python {m['python']}; channel {m['channel']}"
          f"{' (' + m['channel_reason'] + ')' if m.get('channel_reason') else ''}; load avg "
          f"before {m['load_avg_before']} after {m['load_avg_after']}; {report['wall_s']} s")
    print()
    print(f"{'bench':<10} {'n':>4} {'raw p50':>12} {'pyflue p50':>12} {'ratio':>10}")
    for r in report["results"].values():
        ratio = (f"{r['tput_ratio']:.2f}x tput" if "tput_ratio" in r
                 else f"{r['time_ratio']:.3f}x")
        extra = (f"   ({r['raw_mib_s']:.0f} vs {r['pyflue_mib_s']:.0f} MiB/s)"
                 if "tput_ratio" in r else "")
        print(f"{r['name']:<10} {r['n']:>4} {r['raw_p50_ms']:>9.2f} ms "
              f"{r['pyflue_p50_ms']:>9.2f} ms {ratio:>10}{extra}")
    print()
    for t in report["targets"]:
        print(f"target {t['target']}: {t['measured']}: {'met' if t['met'] else 'MISSED'}")
    if args.quick:
        print("\n(--quick: too few iterations to judge the targets)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
