"""Files sent with an invocation: folders packed into tar.gz files, archives sent as they are,
all streamed from disk in one multipart body (see docs/server.md, "Sending files")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyflue.errors import ConfigError
from pyflue.sandbox.base import CopyLimits

# A folder or archive file, or (that, DEST): DEST is where it goes in the workspace.
Upload = str | os.PathLike[str] | tuple[str | os.PathLike[str], str]
Uploads = Sequence[Upload]
ARCHIVE_TYPES = {".zip": "application/zip", ".tar": "application/x-tar",
                 ".gz": "application/gzip", ".tgz": "application/gzip"}
# The client packs what it is given; the server applies its own caps.
_NO_CAP = CopyLimits(file_bytes=1 << 62, total_bytes=1 << 62, entries=1 << 62)


def _one(item: Upload) -> tuple[Path, str | None]:
    if isinstance(item, tuple):
        path, dest = item
        return Path(path), dest
    return Path(item), None


@contextlib.asynccontextmanager
async def multipart_body(payload: Mapping[str, Any] | None,
                         upload: Uploads) -> AsyncIterator[dict[str, Any]]:
    """The request's body arguments for httpx: ``json=`` without uploads, else ``files=``
    (a ``payload`` part and one ``upload:DEST`` part per folder or archive)."""
    if not upload:
        yield {"json": {"payload": dict(payload or {})}}
        return
    from pyflue.uploads import check_dest, pack_folder

    spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="pyflue-upload-"))
    opened: list[Any] = []
    try:
        files: list[tuple[str, tuple[str | None, Any, str]]] = [
            ("payload", (None, json.dumps(dict(payload or {})).encode(), "application/json"))]
        for item in upload:
            path, dest = _one(item)
            if path.is_dir():
                staged = await asyncio.to_thread(
                    pack_folder, path, spool, dest=check_dest(dest if dest is not None
                                                              else path.resolve().name),
                    limits=_NO_CAP)
                path, dest, name = staged.path, staged.info.dest, f"{path.resolve().name}.tar.gz"
            elif path.is_file():
                name, dest = path.name, check_dest(dest or "")
            else:
                raise ConfigError(f"upload {path}: not a folder or archive file on this machine")
            handle = open(path, "rb")  # noqa: SIM115 (closed below, after the request)
            opened.append(handle)
            kind = ARCHIVE_TYPES.get(Path(name).suffix, "application/octet-stream")
            files.append((f"upload:{dest}" if dest else "upload", (name, handle, kind)))
        yield {"files": files}
    finally:
        for handle in opened:
            handle.close()
        await asyncio.to_thread(shutil.rmtree, spool, True)
