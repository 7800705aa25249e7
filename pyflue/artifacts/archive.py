"""A folder of artifacts as one tar stream whose length is known before the first byte.

Each member is a PAX header (built ahead, so its length is known), the content, and zeros up
to the next 512-byte block; two zero blocks end the archive. Nothing is held in memory but a
chunk at a time.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import AsyncIterator

from pyflue.artifacts.base import ArtifactStore
from pyflue.models import Artifact

BLOCK = 512


def _header(name: str, artifact: Artifact) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = artifact.size
    info.mode = 0o644
    info.mtime = int(artifact.saved_at.timestamp())
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _pad(size: int) -> int:
    return -size % BLOCK


class FolderArchive:
    """The artifacts of the folder ``folder`` (their names start with ``folder/``), as a tar
    whose members are named from the folder's own last part down: ``reports/junit.xml``."""

    def __init__(self, store: ArtifactStore, run_id: str, folder: str,
                 artifacts: list[Artifact]) -> None:
        self._store, self._run_id = store, run_id
        base = posixpath.dirname(folder.rstrip("/"))
        self.members = [(_header(a.name[len(base) + 1:] if base else a.name, a), a)
                        for a in artifacts]
        self.filename = posixpath.basename(folder.rstrip("/")) + ".tar"

    @property
    def size(self) -> int:
        return sum(len(h) + a.size + _pad(a.size) for h, a in self.members) + 2 * BLOCK

    async def check(self) -> list[AsyncIterator[bytes]]:
        """Every member's content opened (ArtifactUnavailable before any byte is sent)."""
        return [await self._store.open(a, self._run_id) for _, a in self.members]

    async def stream(self, contents: list[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
        for (header, artifact), content in zip(self.members, contents, strict=True):
            yield header
            async for chunk in content:
                yield chunk
            yield b"\0" * _pad(artifact.size)
        yield b"\0" * (2 * BLOCK)
