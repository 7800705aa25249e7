"""What the benchmarks share: their messages, the machine they ran on, and running one to its
report. Imported by the scripts next to it (``python benchmarks/bench_*.py``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any


def say(msg: str) -> None:
    """Progress, on stderr (stdout carries the report)."""
    print(msg, file=sys.stderr, flush=True)


def machine(client: Any, **extra: Any) -> dict[str, Any]:
    """The machine and engine a benchmark ran on (``client``: a docker-py client), plus
    ``extra`` facts of the benchmark's own."""
    info = client.info()
    return {
        "nproc": os.cpu_count(),
        "docker_cpus": info.get("NCPU"),
        "docker_server_version": info.get("ServerVersion"),
        "storage_driver": info.get("Driver"),
        "cgroup": f"{info.get('CgroupDriver')} v{info.get('CgroupVersion')}",
        "kernel": info.get("KernelVersion"),
        "memory_gib": round(info.get("MemTotal", 0) / (1 << 30), 1),
        "python": platform.python_version(),
        **extra,
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
    }


def run_benchmark(
    main_async: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    args: argparse.Namespace, script: str, argv: list[str] | None,
) -> tuple[dict[str, Any] | None, int]:
    """Runs a benchmark to its report (with ``wall_s`` and the ``command``), or to the exit
    code of a failure: 130 when interrupted, 1 on an error (a missed target is no error)."""
    t0 = time.monotonic()
    try:
        report = asyncio.run(main_async(args))
    except KeyboardInterrupt:
        say("interrupted")
        return None, 130
    except Exception as exc:
        traceback.print_exc()
        say(f"benchmark failed: {type(exc).__name__}: {exc}")
        return None, 1
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["command"] = " ".join([script, *(argv if argv is not None else sys.argv[1:])])
    return report, 0
