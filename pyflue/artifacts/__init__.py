"""Artifacts: files a run saves from its workspace, listed and downloaded by name.

The port is :mod:`.base`; :mod:`.folder` its adapter (a local or shared folder);
:mod:`.workspace` is ``harness.artifacts``; :mod:`.archive` serves a folder as one tar.
See docs/artifacts.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyflue.artifacts.base import (
    ArtifactLimits,
    ArtifactStore,
    NewFile,
    check_name,
    content_type,
    pick,
)

if TYPE_CHECKING:
    from pyflue.settings import Settings
    from pyflue.store.base import RunStore


def artifact_store(settings: Settings, runs: RunStore) -> ArtifactStore:
    """The settings' artifact store over ``runs`` (which keeps the artifacts' records)."""
    from pyflue.artifacts.folder import FolderArtifactStore

    caps = settings.artifacts
    return FolderArtifactStore(settings.artifacts_dir, runs, ArtifactLimits(
        max_bytes=caps.max_bytes, run_max_bytes=caps.run_max_bytes, max_count=caps.max_count))


__all__ = ["ArtifactLimits", "ArtifactStore", "NewFile", "artifact_store", "check_name",
           "content_type", "pick"]
