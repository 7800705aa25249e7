"""``harness.artifacts``: saving files of the run's workspace as the run's artifacts.

Files leave the container through the sandbox's copy-out, which writes regular files and
folders only: a symlink inside a saved folder or matched by a glob is never followed (it is
skipped); a path that reaches a symlink pointing outside the workspace is refused, as
``harness.fs`` refuses it. A folder is saved as its files, one artifact each, named
``<folder>/<path inside it>``; ``GET /runs/{run_id}/artifacts/<folder>`` serves them back as
one tar.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyflue.artifacts.base import ArtifactStore, NewFile, check_name
from pyflue.errors import (
    ArtifactTooLarge,
    ConfigError,
    FileNotFoundInSandbox,
    PyflueError,
    WorkspacePathError,
)
from pyflue.events import ArtifactSaved, Log
from pyflue.models import Artifact
from pyflue.sandbox.base import CopyLimits, FileStat, Sandbox
from pyflue.sandbox.paths import confine, is_inside, relative_parts
from pyflue.sandbox.tario import CopyTooLarge

if TYPE_CHECKING:
    from pyflue.harness import WorkspaceFS
    from pyflue.recorder import RunRecorder

MAGIC = frozenset("*?[")


def _magic(part: str) -> bool:
    return any(c in MAGIC for c in part)


class WorkspaceArtifacts:
    """Saves workspace files as the run's artifacts (``await harness.artifacts.save(...)``)."""

    def __init__(self, fs: WorkspaceFS, box: Sandbox, recorder: RunRecorder,
                 store: ArtifactStore | None, *, copy_limits: CopyLimits) -> None:
        self._fs, self._box, self._recorder = fs, box, recorder
        self._store = store
        self._copy_limits = copy_limits

    @property
    def run_id(self) -> str:
        return self._recorder.run_id

    async def save(self, path: str, *, name: str | None = None) -> list[Artifact]:
        """Saves ``path`` (relative to the agent's cwd, or absolute in the workspace) as
        artifacts and returns them: a file as one, a folder as its files, a glob
        (``dist/*.whl``, ``**/junit*.xml``) as every file or folder it matches.

        An artifact's name is its path relative to the cwd (to the workspace when outside
        it); ``name`` renames a file, or replaces the folder or glob's base in the names
        (``name/<file>``). Saving a name again replaces it. Each save emits
        ``artifact_saved``. Raises FileNotFoundInSandbox when nothing is there or nothing
        matches, WorkspacePathError for a path outside the workspace (``..``, a symlink
        pointing out), ArtifactTooLarge over the caps (PYFLUE_ARTIFACTS_*)."""
        store = self._require_store()
        if name is not None:
            check_name(name)
        if not isinstance(path, str):
            raise ConfigError(f"artifacts.save takes a path string, not {type(path).__name__}")
        if any(_magic(p) for p in path.split("/")):
            matches = await self._glob(path)
            if not matches:
                raise FileNotFoundInSandbox(f"no file or folder in the workspace matches {path!r}")
            saved: list[Artifact] = []
            for logical, st in matches:
                label = f"{name}/{posixpath.basename(logical)}" if name else self._name(logical)
                saved += await self._save_one(store, st, label)
            return saved
        logical = confine(path, root=self._fs.root, cwd=self._fs.cwd)
        _real, found = await self._fs.locate(path)
        if found is None:
            raise FileNotFoundInSandbox(f"no such file or folder in the workspace: {path}")
        return await self._save_one(store, found, name or self._name(logical))

    async def collect(self, patterns: Sequence[str]) -> list[Artifact]:
        """Saves what each pattern matches (the agent's ``artifacts`` option, at the run's
        end). A pattern that matches nothing or fails is a ``log`` event, not an error: the
        run's outcome is its workflow's."""
        saved: list[Artifact] = []
        for pattern in patterns:
            try:
                saved += await self.save(pattern)
            except FileNotFoundInSandbox:
                self._recorder.emit(Log(level="warn", message=f"artifacts: nothing in the "
                                        f"workspace matches {pattern!r}"))
            except PyflueError as exc:
                self._recorder.emit(Log(level="error", message=f"artifacts: saving {pattern!r} "
                                        f"failed: {exc.public_message}"))
        return saved

    def _require_store(self) -> ArtifactStore:
        if self._store is None:
            raise ConfigError("this runner has no artifact store: build it with "
                              "pyflue.wiring.open_runner, or pass artifacts= to Runner")
        return self._store

    def _name(self, logical: str) -> str:
        base = self._fs.cwd if is_inside(logical, self._fs.cwd) else self._fs.root
        rel = posixpath.relpath(logical, base)
        if rel == ".":
            rel = posixpath.basename(logical) or "workspace"
        return rel

    async def _glob(self, pattern: str) -> list[tuple[str, FileStat]]:
        """(logical path, stat) of what ``pattern`` matches; symlinks are not matched."""
        logical = confine(pattern, root=self._fs.root, cwd=self._fs.cwd)
        parts = relative_parts(logical, self._fs.root)
        first = next(i for i, p in enumerate(parts) if _magic(p) or p == "**")
        base = posixpath.join(self._fs.root, *parts[:first])
        real, st = await self._fs.locate(base)  # a link on the fixed part is checked there
        if st is None or st.kind != "dir":
            return []
        found: dict[str, FileStat] = {}
        await self._walk(base, real, parts[first:], found)
        return sorted(found.items())

    async def _walk(self, logical: str, real: str, rest: list[str],
                    found: dict[str, FileStat]) -> None:
        limit = self._require_store().limits.max_count
        head, tail = rest[0], rest[1:]
        if head == "**":
            if tail:
                await self._walk(logical, real, tail, found)
            for entry in await self._box.listdir(real):
                if entry.kind == "dir":
                    name = posixpath.basename(entry.path)
                    await self._walk(posixpath.join(logical, name), entry.path, rest, found)
            return
        for entry in await self._box.listdir(real):
            name = posixpath.basename(entry.path)
            if not fnmatch.fnmatchcase(name, head) or entry.kind in ("symlink", "other"):
                continue
            if tail and entry.kind == "dir":
                await self._walk(posixpath.join(logical, name), entry.path, tail, found)
            elif not tail:
                found[posixpath.join(logical, name)] = entry
            if len(found) > limit:
                raise ArtifactTooLarge(f"the glob matches more than {limit} files and folders "
                                       "(PYFLUE_ARTIFACTS_MAX_COUNT): narrow it")

    async def _save_one(self, store: ArtifactStore, st: FileStat, label: str) -> list[Artifact]:
        label = check_name(self._recorder.redactor.text(label))
        if st.kind not in ("file", "dir"):
            raise WorkspacePathError(f"{st.path} is a {st.kind}, not a file or folder")
        limits = store.limits
        if st.kind == "file" and st.size > limits.max_bytes:
            raise ArtifactTooLarge(
                f"artifact {label!r} ({st.path}) is {st.size} bytes, over the cap of "
                f"{limits.max_bytes} bytes per artifact: save less, or raise "
                "PYFLUE_ARTIFACTS_MAX_BYTES")
        caps = CopyLimits(file_bytes=min(self._copy_limits.file_bytes, limits.max_bytes),
                          total_bytes=min(self._copy_limits.total_bytes, limits.run_max_bytes),
                          entries=min(self._copy_limits.entries, limits.max_count * 2))
        with store.staging() as area:
            staged = area / "copy"
            try:
                await self._box.copy_out(st.path, staged, limits=caps)
            except CopyTooLarge as exc:
                raise _too_large(label, exc) from None
            files = [staged] if st.kind == "file" else await asyncio.to_thread(_files, staged)
            redact = self._recorder.redactor.text  # names and paths are streamed: no secrets
            batch = []
            for file in files:
                inner = file.relative_to(staged).as_posix() if st.kind == "dir" else ""
                name = redact(f"{label}/{inner}" if inner else label)
                where = redact(posixpath.join(st.path, inner) if inner else st.path)
                batch.append(NewFile(check_name(name), file, where))
            saved = await store.save_all(self.run_id, batch)
        for artifact, new in zip(saved, batch, strict=True):
            self._recorder.emit(ArtifactSaved(
                name=artifact.name, path=new.path, size=artifact.size, sha256=artifact.sha256,
                content_type=artifact.content_type))
        return saved


def _files(folder: Path) -> list[Path]:
    return sorted((Path(d) / f for d, _, fs in os.walk(folder) for f in fs), key=str)


def _too_large(label: str, exc: CopyTooLarge) -> ArtifactTooLarge:
    name, amount, cap, unit = exc.args
    if unit == "entries":
        return ArtifactTooLarge(f"saving {label!r}: {name} holds more than {cap} files and "
                                "folders; save less, or raise PYFLUE_ARTIFACTS_MAX_COUNT")
    return ArtifactTooLarge(
        f"saving {label!r}: {name} comes to {amount} bytes, over the cap of {cap} bytes; save "
        "less, or raise PYFLUE_ARTIFACTS_MAX_BYTES / PYFLUE_ARTIFACTS_RUN_MAX_BYTES")
