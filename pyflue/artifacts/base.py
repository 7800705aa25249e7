"""The artifact store port: the files runs save, kept by name, served by any worker.

A run saves files of its workspace (:mod:`pyflue.artifacts.workspace`); the store keeps their
content and records each one (:class:`pyflue.models.Artifact`: name, size, sha256, content
type) in the run store, so every worker sharing that store lists the same artifacts. Adapters:
:mod:`pyflue.artifacts.folder` (a local or shared folder, PYFLUE_ARTIFACTS_DIR). Every adapter
answers alike (``tests/unit/test_artifacts.py`` runs one contract over each):

- A save is atomic: the artifact is listed with its content complete, or not at all; saving a
  name again replaces it. Its sha256 is computed while its bytes are written.
- The caps (:class:`ArtifactLimits`) hold per artifact and per run: over them is
  :class:`~pyflue.errors.ArtifactTooLarge`, naming the setting to raise, and nothing is kept.
- Names are relative paths (:func:`check_name`); a name no artifact has, and no folder of
  them, is :class:`~pyflue.errors.ArtifactNotFound`.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pyflue.errors import ArtifactNotFound, ConfigError
from pyflue.models import Artifact

MAX_NAME = 1000  # characters, as the run store's column keeps them


@dataclass(frozen=True)
class ArtifactLimits:
    """The caps: bytes of one artifact, bytes of all a run keeps, and how many it keeps."""

    max_bytes: int
    run_max_bytes: int
    max_count: int


@dataclass(frozen=True)
class NewFile:
    """A local file to keep as the artifact ``name``; ``path``: where in the workspace it was."""

    name: str
    source: Path
    path: str


def check_name(name: str) -> str:
    """``name`` if it can name an artifact: a relative path of non-empty parts, none of them
    ``.`` or ``..``, no control characters, at most 1000 characters. ConfigError otherwise."""
    if not isinstance(name, str) or not name:
        raise ConfigError("an artifact name must be a non-empty string, such as "
                          "`reports/junit.xml`")
    problem = None
    if len(name) > MAX_NAME:
        problem = f"is longer than {MAX_NAME} characters"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "holds a control character"
    elif name.startswith("/"):
        problem = "is absolute"
    elif any(part in ("", ".", "..") for part in name.split("/")):
        problem = "has an empty, `.` or `..` part"
    if problem:
        raise ConfigError(f"artifact name {name[:200]!r} {problem}: name it with a relative "
                          "path such as `reports/junit.xml`")
    return name


def content_type(name: str) -> str:
    """The media type of a name, guessed from its extension."""
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding == "gzip":
        return "application/gzip"
    return guessed or "application/octet-stream"


def pick(artifacts: list[Artifact], name: str, run_id: str) -> Artifact | list[Artifact]:
    """The artifact called ``name``, else the artifacts in the folder ``name`` (a list);
    ArtifactNotFound (listing some names) when neither exists."""
    for artifact in artifacts:
        if artifact.name == name:
            return artifact
    prefix = name.rstrip("/") + "/"
    inside = [a for a in artifacts if a.name.startswith(prefix)]
    if inside:
        return inside
    if not artifacts:
        known = "it has none"
    else:
        names = ", ".join(a.name for a in artifacts[:10])
        known = f"it has {names}" + (" ..." if len(artifacts) > 10 else "")
    raise ArtifactNotFound(f"run {run_id} has no artifact or folder of artifacts named "
                           f"{name!r}: {known} (`GET /runs/{{run_id}}/artifacts` lists them)")


class ArtifactStore(Protocol):
    """Where artifacts' contents live. Methods raise :class:`~pyflue.errors.ArtifactError`
    subclasses, and RunNotFound for a run the run store does not have."""

    @property
    def limits(self) -> ArtifactLimits: ...

    def staging(self) -> AbstractContextManager[Path]:
        """A new empty local folder to copy files into before :meth:`save`, removed on exit."""
        ...

    async def save(self, run_id: str, name: str, source: Path, *, path: str) -> Artifact:
        """Keeps the local file ``source`` as the run's artifact ``name`` (``path``: where in
        the workspace it came from), replacing one of that name; returns its record."""
        ...

    async def save_all(self, run_id: str, files: Sequence[NewFile]) -> list[Artifact]:
        """:meth:`save` for several files at once (a folder): the caps are checked for all of
        them before any is kept."""
        ...

    async def list(self, run_id: str) -> list[Artifact]:
        """The run's artifacts by name."""
        ...

    async def open(self, artifact: Artifact, run_id: str, *, start: int = 0,
                   stop: int | None = None) -> AsyncIterator[bytes]:
        """The bytes ``start`` to ``stop`` (exclusive; None: the end) of an artifact, as
        chunks. ArtifactUnavailable, before any chunk, when its content is not here."""
        ...

    async def delete_run(self, run_id: str) -> None:
        """Removes every artifact of the run, records and contents; none is not an error."""
        ...
