"""Fetching a run's artifacts into a local folder (``pyflue artifacts --download``), from this
machine's artifact store or from a server, each file checked against its sha256.

Names come from the store or the server: each is checked again (:func:`check_name`) and
written only under the destination folder, never over a symlink.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pyflue.artifacts.base import ArtifactStore, check_name, pick
from pyflue.errors import ArtifactError, ConfigError
from pyflue.models import Artifact

if TYPE_CHECKING:
    from pyflue.client import PyFlueClient


class ArtifactSource(Protocol):
    async def list(self, run_id: str) -> list[Artifact]: ...

    async def fetch(self, run_id: str, artifact: Artifact, dest: Path) -> None:
        """Writes the artifact's bytes to the new file ``dest``."""
        ...


class StoreSource:
    """This machine's artifact store."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store

    async def list(self, run_id: str) -> list[Artifact]:
        return await self._store.list(run_id)

    async def fetch(self, run_id: str, artifact: Artifact, dest: Path) -> None:
        await _write(await self._store.open(artifact, run_id), dest)


class ServerSource:
    """A server's artifacts, through the Python client."""

    def __init__(self, client: PyFlueClient) -> None:
        self._client = client

    async def list(self, run_id: str) -> list[Artifact]:
        return await self._client.runs.list_artifacts(run_id)

    async def fetch(self, run_id: str, artifact: Artifact, dest: Path) -> None:
        await self._client.runs.download_artifact(run_id, artifact.name, dest)


async def _write(chunks: AsyncIterator[bytes], dest: Path) -> None:
    with dest.open("xb") as out:
        async for chunk in chunks:
            await asyncio.to_thread(out.write, chunk)


def chosen(artifacts: list[Artifact], names: list[str], run_id: str) -> list[Artifact]:
    """The artifacts ``names`` pick (each a name or a folder of them), else all of them."""
    if not names:
        return artifacts
    out: dict[str, Artifact] = {}
    for name in names:
        found = pick(artifacts, name, run_id)
        for artifact in found if isinstance(found, list) else [found]:
            out[artifact.name] = artifact
    return list(out.values())


async def download(source: ArtifactSource, run_id: str, artifacts: list[Artifact],
                   folder: Path) -> list[Path]:
    """Writes each artifact to ``folder/<name>`` and returns the paths. A file already there
    is a ConfigError (nothing is overwritten); one whose bytes do not match its sha256 is
    removed and an ArtifactError."""
    folder = folder.resolve()
    written = []
    for artifact in artifacts:
        target = folder.joinpath(*check_name(artifact.name).split("/"))
        if target.exists() or target.is_symlink():
            raise ConfigError(f"{target} exists already: download into a new or empty folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(folder):  # a symlinked folder on the way
            raise ConfigError(f"{target.parent} leads outside {folder}: download elsewhere")
        await source.fetch(run_id, artifact, target)
        digest = await asyncio.to_thread(_sha256, target)
        if digest != artifact.sha256:
            target.unlink()
            raise ArtifactError(f"artifact {artifact.name!r} arrived with sha256 {digest}, not "
                                f"{artifact.sha256}: download it again")
        written.append(target)
    return written


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["ArtifactSource", "ServerSource", "StoreSource", "chosen", "download"]
