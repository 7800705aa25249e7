"""The folder artifact store: contents in a local (or shared) folder, records in the run store.

Layout under the root (PYFLUE_ARTIFACTS_DIR): ``<run id, percent-encoded>/<sha256>``, one file
per distinct content of a run (two names with the same bytes share it), and ``.staging/`` for
copies on their way in. A content file is written as ``.part-*`` beside its final name, hashed
while written, flushed to disk and renamed: a reader never sees half a file, and a crash leaves
only a ``.part-*`` that the run's deletion removes. Workers sharing PostgreSQL serve each
other's artifacts when they all mount the same folder at PYFLUE_ARTIFACTS_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

from pyflue.artifacts.base import ArtifactLimits, NewFile, check_name, content_type
from pyflue.errors import ArtifactError, ArtifactTooLarge, ArtifactUnavailable
from pyflue.models import Artifact, utcnow
from pyflue.store.base import RunStore

CHUNK = 1 << 20


class _Over(Exception):
    """The content passed the cap it was written under (internal)."""


class _Tally:
    """A run's artifacts as a save goes: sizes by name, and how many names share a content."""

    def __init__(self, kept: dict[str, Artifact]) -> None:
        self.sizes = {name: a.size for name, a in kept.items()}
        self._shas = {name: a.sha256 for name, a in kept.items()}
        self.shas: Counter[str] = Counter(self._shas.values())
        self.used = sum(self.sizes.values())

    def used_without(self, name: str) -> int:
        return self.used - self.sizes.get(name, 0)

    def add(self, name: str, size: int, sha256: str) -> str | None:
        """Counts ``name`` as saved; the content it replaced, if any."""
        self.used += size - self.sizes.get(name, 0)
        self.sizes[name] = size
        old = self._shas.get(name)
        if old is not None:
            self.shas[old] -= 1
        self._shas[name] = sha256
        self.shas[sha256] += 1
        return old if old != sha256 else None


class FolderArtifactStore:
    def __init__(self, root: Path, runs: RunStore, limits: ArtifactLimits) -> None:
        self.root = Path(root)
        self._runs = runs
        self._limits = limits

    @property
    def limits(self) -> ArtifactLimits:
        return self._limits

    def _run_dir(self, run_id: str) -> Path:
        return self.root / quote(run_id, safe="")

    def _failed(self, exc: OSError, what: str) -> ArtifactError:
        return ArtifactError(f"{what} the artifact folder failed: {exc.strerror or exc}; check "
                             "that PYFLUE_ARTIFACTS_DIR is writable and has room",
                             hint=f"the folder is {self.root}")

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        area = self.root / ".staging"
        try:
            area.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix="copy-", dir=area)
        except OSError as exc:
            raise self._failed(exc, "preparing") from exc
        try:
            yield Path(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    async def save(self, run_id: str, name: str, source: Path, *, path: str) -> Artifact:
        return (await self.save_all(run_id, [NewFile(name, source, path)]))[0]

    async def save_all(self, run_id: str, files: Sequence[NewFile]) -> list[Artifact]:
        for file in files:
            check_name(file.name)
        kept = {a.name: a for a in await self._runs.list_artifacts(run_id)}  # RunNotFound first
        sizes = await asyncio.to_thread(lambda: [f.source.stat().st_size for f in files])
        tally = _Tally(kept)
        for file, size in zip(files, sizes, strict=True):  # all checked before any is written
            self._check(run_id, file.name, size, tally)
            tally.add(file.name, size, "")
        tally = _Tally(kept)
        saved = []
        for file in files:
            saved.append(await self._save_one(run_id, file, tally))
        return saved

    async def _save_one(self, run_id: str, file: NewFile, tally: _Tally) -> Artifact:
        used = tally.used_without(file.name)
        cap = min(self._limits.max_bytes, self._limits.run_max_bytes - used)
        try:
            digest, size = await asyncio.to_thread(self._write, self._run_dir(run_id),
                                                   file.source, cap)
        except _Over:  # it grew since it was measured: over one cap or the other all the same
            self._check(run_id, file.name, cap + 1, tally)
            raise
        except OSError as exc:
            raise self._failed(exc, "writing to") from exc
        artifact = Artifact(name=file.name, size=size, sha256=digest,
                            content_type=content_type(file.name), path=file.path,
                            saved_at=utcnow())
        await self._runs.put_artifact(run_id, artifact)
        replaced = tally.add(file.name, size, digest)
        if replaced is not None and not tally.shas[replaced]:  # content no other name has
            with contextlib.suppress(OSError):
                (self._run_dir(run_id) / replaced).unlink()
        return artifact

    def _check(self, run_id: str, name: str, size: int, tally: _Tally) -> None:
        if name not in tally.sizes and len(tally.sizes) >= self._limits.max_count:
            raise ArtifactTooLarge(
                f"saving {name!r} would make {len(tally.sizes) + 1} artifacts of run {run_id}, "
                f"over the cap of {self._limits.max_count} (PYFLUE_ARTIFACTS_MAX_COUNT): save "
                "fewer files (a folder's files count one each), or raise "
                "PYFLUE_ARTIFACTS_MAX_COUNT")
        self._check_size(run_id, name, size, tally.used_without(name))

    def _check_size(self, run_id: str, name: str, size: int, used: int) -> None:
        limits = self._limits
        if size > limits.max_bytes:
            raise ArtifactTooLarge(
                f"artifact {name!r} is {size} bytes, over the cap of {limits.max_bytes} bytes "
                "per artifact: save less (a glob of the files you need), or raise "
                "PYFLUE_ARTIFACTS_MAX_BYTES")
        if used + size > limits.run_max_bytes:
            raise ArtifactTooLarge(
                f"artifact {name!r} ({size} bytes) would bring run {run_id}'s artifacts to "
                f"{used + size} bytes, over the cap of {limits.run_max_bytes} bytes per run: "
                "save less, or raise PYFLUE_ARTIFACTS_RUN_MAX_BYTES")

    @staticmethod
    def _write(folder: Path, source: Path, cap: int) -> tuple[str, int]:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=folder)
        try:
            digest, size = hashlib.sha256(), 0
            with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(CHUNK):
                    size += len(chunk)
                    if size > cap:
                        raise _Over(size)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, folder / digest.hexdigest())
            return digest.hexdigest(), size
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def list(self, run_id: str) -> list[Artifact]:
        return await self._runs.list_artifacts(run_id)

    async def open(self, artifact: Artifact, run_id: str, *, start: int = 0,
                   stop: int | None = None) -> AsyncIterator[bytes]:
        blob = self._run_dir(run_id) / artifact.sha256
        if not await asyncio.to_thread(blob.is_file):
            raise ArtifactUnavailable(
                f"artifact {artifact.name!r} of run {run_id} is listed but its content is not "
                "in this server's artifact folder: workers sharing a database must share one "
                "PYFLUE_ARTIFACTS_DIR (see docs/artifacts.md)", hint=f"looked in {self.root}")
        return self._chunks(blob, start, artifact.size if stop is None else stop)

    async def _chunks(self, blob: Path, start: int, stop: int) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, blob, "rb")
        try:
            await asyncio.to_thread(handle.seek, start)
            left = stop - start
            while left > 0:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def delete_run(self, run_id: str) -> None:
        await self._runs.delete_artifacts(run_id)
        await asyncio.to_thread(shutil.rmtree, self._run_dir(run_id), True)
