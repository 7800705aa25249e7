"""How much run store a large payload costs: SQLite file growth over a few runs of a workflow
that takes a large payload, as a multiple of the payload's size (the baseline in the same run:
the payload itself). Pure store and runner on the library's fake sandbox: no Docker needed.

    .venv/bin/python benchmarks/bench_payload_store.py [--mb 10] [--runs 3]

"Live" leaves out the pages SQLite keeps free for reuse (a row it rewrites on update leaves its
old version's pages free; the next writes reuse them, so they are paid once, not per run).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from sqlalchemy import text

from pyflue.store import SqlStore
from pyflue.testing import fake_runner

WORKFLOW = "async def run(ctx):\n    return len(ctx.payload['blob'])\n"


async def _size(store: SqlStore, path: Path) -> tuple[int, int]:
    async with store.engine.connect() as conn:  # everything in the main file, the WAL empty
        await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        free = (await conn.execute(text("PRAGMA freelist_count"))).scalar_one()
        page = (await conn.execute(text("PRAGMA page_size"))).scalar_one()
    size = path.stat().st_size
    return size, size - free * page


async def main(mb: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pyflue-bench-payload-") as tmp:
        project = Path(tmp)
        (project / "workflows").mkdir()
        (project / "workflows" / "big.py").write_text(WORKFLOW)
        path = project / "runs.db"
        store = SqlStore(f"sqlite+aiosqlite:///{path}")
        await store.open()
        try:
            runner = fake_runner(project, store=store)
            await runner.run("big", {"blob": "warm-up"})
            file0, live0 = await _size(store, path)
            n = mb << 20
            for _ in range(runs):
                await runner.run("big", {"blob": "x" * n})
            file1, live1 = await _size(store, path)
        finally:
            await store.close()
    print(f"{runs} runs of a {mb} MiB payload: file +{(file1 - file0) / n:.2f}x the payload, "
          f"live pages +{(live1 - live0) / n:.2f}x ({(live1 - live0) / n / runs:.2f}x per run)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.mb, args.runs))
