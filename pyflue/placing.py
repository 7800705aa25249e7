"""Putting a run's uploads into its workspace, when its container starts.

Each upload is read from the run store (so any worker can do it) into a spool file on this
host, unpacked there with the checks it passed when it was sent (:func:`pyflue.uploads.unpack`),
and copied into the container in one transfer, owned by the sandbox user; a ``file_op``
``upload`` event tells of each. The spool is removed whatever happens.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pyflue.events import FileOp
from pyflue.models import UploadInfo
from pyflue.sandbox.base import CopyLimits, Emit, PutEntry, Sandbox
from pyflue.sandbox.tario import local_entries
from pyflue.store.base import RunStore
from pyflue.uploads import unpack


async def place_uploads(store: RunStore, run_id: str, box: Sandbox,
                        uploads: Sequence[UploadInfo], emit: Emit, *, limits: CopyLimits,
                        spool: Path) -> None:
    """Unpacks the run's uploads into ``box``'s workspace, in the order they were sent."""
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="place-", dir=spool))
    try:
        for position, info in enumerate(uploads):
            archive = work / f"{position}.archive"
            with open(archive, "wb") as out:
                async for chunk in store.read_upload(run_id, position):
                    await asyncio.to_thread(out.write, chunk)
            tree = work / str(position)
            await asyncio.to_thread(unpack, archive, tree, limits=limits)
            entries = await asyncio.to_thread(_entries, tree, info.dest, limits)
            await box.put(box.workdir, entries)
            emit(FileOp(op="upload", path=info.path(box.workdir), files=info.files,
                        folders=info.folders, bytes=info.bytes, skipped=info.skipped or None,
                        skipped_count=len(info.skipped) or None))
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)


def _entries(tree: Path, dest: str, limits: CopyLimits) -> list[PutEntry]:
    """The unpacked tree as entries below the workspace: under ``dest``, parents made."""
    found, _report = local_entries(tree, limits=limits)
    parts = dest.split("/") if dest else []
    parents = [PutEntry("/".join(parts[: i + 1]), None) for i in range(len(parts))]
    placed = []
    for entry in found:
        inner = entry.path[len(tree.name):].lstrip("/")
        if not inner:
            continue  # the tree itself: `dest` (a parent above), or the workspace
        placed.append(PutEntry("/".join([*parts, inner]), entry.data, entry.mode,
                               entry.source))
    return [*parents, *placed]
