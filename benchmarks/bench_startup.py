"""Start-up cost: what a workflow file's ``import pyflue`` and the ``pyflue`` command pay.

Each case is a fresh interpreter (``python -c ...`` or the ``pyflue`` entry point of this
virtualenv), timed from spawn to exit. Cases are interleaved round by round (the order turned
each round) after one discarded warm-up round, so that noise on a shared machine falls on all of
them alike. Reported: the median and 90th percentile of each, and the ratio of each median to
that of importing the raw Docker SDK (``python -c "import docker"``) in the same run.

    .venv/bin/python benchmarks/bench_startup.py             # 30 rounds
    .venv/bin/python benchmarks/bench_startup.py --quick     # 5 rounds, a smoke run
    .venv/bin/python benchmarks/bench_startup.py --json out.json

Targets (absolute, on this machine): ``from pyflue import FlueContext, create_agent`` (what a
workflow module does) and ``import pyflue`` at most 0.15 s; ``pyflue --help`` and ``pyflue
--version`` at most 0.25 s. Exits 0 when every case ran (targets met or not), 1 on an error,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import say

PY = sys.executable
PYFLUE = str(Path(PY).with_name("pyflue"))

# name -> (argv, target seconds or None)
CASES: dict[str, tuple[list[str], float | None]] = {
    "python -c pass": ([PY, "-c", "pass"], None),
    "import docker (raw SDK)": ([PY, "-c", "import docker"], None),
    "import pyflue": ([PY, "-c", "import pyflue"], 0.15),
    "from pyflue import FlueContext, create_agent": (
        [PY, "-c", "from pyflue import FlueContext, create_agent"], 0.15),
    "pyflue --version": ([PYFLUE, "--version"], 0.25),
    "pyflue --help": ([PYFLUE, "--help"], 0.25),
}
REFERENCE = "import docker (raw SDK)"


def once(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')[-400:]}")
    return took


def measure(rounds: int) -> dict[str, list[float]]:
    names = list(CASES)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            took = once(CASES[name][0])
            if r > 0:  # round 0 warms the disk cache and is discarded
                samples[name].append(took)
        if r and r % 10 == 0:
            say(f"  {r}/{rounds} rounds")
    return samples


def report(samples: dict[str, list[float]]) -> dict[str, Any]:
    ref = statistics.median(samples[REFERENCE])
    rows = {}
    for name, values in samples.items():
        p50 = statistics.median(values)
        target = CASES[name][1]
        rows[name] = {
            "p50_s": round(p50, 4),
            "p90_s": round(statistics.quantiles(values, n=10)[-1], 4) if len(values) > 1
            else round(p50, 4),
            "x_raw_import_docker": round(p50 / ref, 2),
            "target_s": target,
            "met": None if target is None else p50 <= target,
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds: a smoke run")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    t0 = time.monotonic()
    say(f"start-up: {len(CASES)} cases x {rounds} rounds")
    try:
        samples = measure(rounds)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:
        say(f"benchmark failed: {type(exc).__name__}: {exc}")
        return 1
    out = {
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_before": [round(x, 2) for x in os.getloadavg()]},
        "rounds": rounds,
        "cases": report(samples),
        "wall_s": round(time.monotonic() - t0, 1),
        "command": " ".join(["benchmarks/bench_startup.py",
                             *(argv if argv is not None else sys.argv[1:])]),
    }
    for name, row in out["cases"].items():
        verdict = "" if row["met"] is None else ("  ok" if row["met"] else "  MISSED")
        target = f" (target {row['target_s']} s)" if row["target_s"] else ""
        say(f"{name:<46} p50 {row['p50_s']:.3f} s  p90 {row['p90_s']:.3f} s  "
            f"{row['x_raw_import_docker']:.2f}x import docker{target}{verdict}")
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
