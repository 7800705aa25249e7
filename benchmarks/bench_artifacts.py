"""What keeping an artifact costs over copying the same file out, in one run's container.

In one real run (Docker engine, SQLite store), interleaved pairs on the same file of
``--size-mb`` MiB: (a) ``harness.fs.download`` to a new local file (the baseline: the same
copy-out) against (b) ``harness.artifacts.save`` (copy-out, sha256 while writing into the
artifact store, fsync, rename, the record). Then reading the artifact back through the store
(``open`` and its chunks) against reading the stored file with plain ``open().read`` in chunks.
Prints medians and the ratios; the machine is shared, so only the ratios mean much.

    .venv/bin/python benchmarks/bench_artifacts.py [--size-mb 50] [--n 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, run_benchmark, say

WORKFLOW = '''
import time
from pyflue import create_agent
agent = create_agent(lambda ctx: {})

async def run(ctx):
    h = await ctx.init(agent)
    n, size, out = ctx.payload["n"], ctx.payload["size"], ctx.payload["out"]
    await h.shell(f"head -c {size} /dev/urandom > big.bin")
    download, save = [], []
    for i in range(n):
        t = time.perf_counter()
        await h.fs.download("big.bin", f"{out}/copy{i}")
        download.append(time.perf_counter() - t)
        t = time.perf_counter()
        await h.artifacts.save("big.bin", name=f"big{i}.bin")
        save.append(time.perf_counter() - t)
    return {"download": download, "save": save}
'''


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import docker

    from pyflue.settings import Settings
    from pyflue.wiring import open_runner

    size = args.size_mb << 20
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as tmp:
        root = Path(tmp)
        (root / "workflows").mkdir()
        (root / "workflows" / "big.py").write_text(WORKFLOW)
        (root / "out").mkdir()
        settings = Settings(project_dir=root, store_url=f"sqlite+aiosqlite:///{root}/s/p.db")
        async with open_runner(settings) as runner:
            say(f"one run: {args.n} pairs of download / save of {args.size_mb} MiB")
            run = await runner.run("big", {"n": args.n, "size": size, "out": str(root / "out")})
            assert run.result is not None, run.error
            times: dict[str, list[float]] = run.result
            store_read, plain_read = [], []
            for artifact in await runner.artifacts.list(run.run_id):
                t = time.perf_counter()
                async for _ in await runner.artifacts.open(artifact, run.run_id):
                    pass
                store_read.append(time.perf_counter() - t)
                t = time.perf_counter()
                with open(runner.artifacts.root / run.run_id.replace(":", "%3A")  # type: ignore[attr-defined]
                          / artifact.sha256, "rb") as src:
                    while src.read(1 << 20):
                        pass
                plain_read.append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in
           {**times, "store_read": store_read, "plain_read": plain_read}.items()}
    client = docker.from_env()
    report = {
        "machine": machine(client, size_mb=args.size_mb, pairs=args.n),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "save_over_download": round(med["save"] / med["download"], 2),
        "store_read_over_plain_read": round(med["store_read"] / med["plain_read"], 2),
    }
    client.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report, code = run_benchmark(main_async, args, "benchmarks/bench_artifacts.py", argv)
    if report is not None:
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
